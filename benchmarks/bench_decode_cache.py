"""Decode cache: seconds to load a split by decoding (load_split) against a cold and a warm decode cache.

Run: ``.venv/bin/python -m benchmarks.bench_decode_cache [--data data] [--photos DIR] [--sizes 64 128]``;
writes benchmarks/results/bench_decode_cache.md. ``--data`` is searched for data sets (folders with a
manifest.csv: the pipeline's data/ after ``dvc repro``); ``--photos`` is a folder of JPEG/PNG photographs written
into a temporary data set (split train, no masks) to show the real-photo case. Each load runs in this process:
decode = best of ``--repeats`` plain ``load_split``; cold = the first ``cached_load_split`` into an empty cache
(decode + hash + write); warm = the next one (hash + read).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lofiseg.atomic import atomic_write_text
from lofiseg.data.decode_cache import CACHE_ENV, cached_load_split
from lofiseg.data.format import MANIFEST, SPLITS, Dataset, DatasetWriter
from lofiseg.data.loading import load_split

PROJECT = Path(__file__).resolve().parent.parent
RESULTS = PROJECT / "benchmarks" / "results" / "bench_decode_cache.md"
PHOTO_EXTS = (".jpg", ".jpeg", ".png")


def seconds(call: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def photo_set(photos: Path, into: Path, limit: int) -> Path:
    """The photographs of ``photos`` (at most ``limit``, sorted) as a data set, bytes kept as they are."""
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in PHOTO_EXTS)[:limit]
    if not files:
        raise SystemExit(f"error: --photos {photos}: no {'/'.join(PHOTO_EXTS)} files")
    root = into / f"photos-{photos.name}"
    with DatasetWriter(root) as writer:
        for i, path in enumerate(files):
            writer.add_encoded(f"p{i:05d}", path.read_bytes(), path.suffix.lstrip("."), None, "train",
                               source=f"local:{path.name}")
    return root


def measure(root: Path, size: int, repeats: int, cache: Path) -> list[tuple[str, int, float, float, float]]:
    data = Dataset(root)
    rows = []
    for split in SPLITS:
        records = data.split(split)
        if not records:
            continue
        with_masks = all(r.has_mask for r in records)
        load = (data, records, size, with_masks)
        decode = min(seconds(load_split, *load) for _ in range(repeats))
        os.environ[CACHE_ENV] = str(cache / f"{root.name}-{split}-{size}")
        cold = seconds(cached_load_split, *load)
        warm = min(seconds(cached_load_split, *load) for _ in range(repeats))
        rows.append((split, len(records), decode, cold, warm))
        print(f"{root} {split} {size}px: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=PROJECT / "data", help="folder searched for data sets")
    parser.add_argument("--photos", type=Path, help="folder of photographs to time as one more data set")
    parser.add_argument("--photo-limit", type=int, default=600)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    sets = sorted(p.parent for p in args.data.rglob(MANIFEST) if "downloads" not in p.parts)
    lines = ["| data set | split | images | size | decode s | cold cache s | warm cache s | saved per load |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    total_decode = total_warm = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        if args.photos:
            sets.append(photo_set(args.photos, Path(tmp), args.photo_limit))
        for root in sets:
            name = root.relative_to(args.data).as_posix() if root.is_relative_to(args.data) else root.name
            for size in args.sizes:
                for split, count, decode, cold, warm in measure(root, size, args.repeats, Path(tmp) / "cache"):
                    total_decode, total_warm = total_decode + decode, total_warm + warm
                    lines.append(f"| {name} | {split} | {count} | {size} | {decode:.3f} | {cold:.3f} | {warm:.3f} | "
                                 f"{decode - warm:.3f} ({decode / max(warm, 1e-9):.0f}x) |")
    lines.append(f"| **all** | | | | {total_decode:.2f} | | {total_warm:.2f} | {total_decode - total_warm:.2f} |")
    text = "\n".join([
        "# Decode cache", "",
        f"`python -m benchmarks.bench_decode_cache {' '.join(argv if argv is not None else sys.argv[1:])}`; "
        f"{platform.machine()}, {os.cpu_count()} cores; best of {args.repeats} (cold: once). decode: plain "
        "`load_split`; cold: first `cached_load_split` (decode + sha256 of the files + write); warm: "
        "`cached_load_split` from the cache (sha256 of the files + read).", "", *lines, ""])
    atomic_write_text(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
