"""DVC stage `noise@<rate>`: a low-fidelity copy of a data set with region labels flipped at one rate.

Only the train split is corrupted (val and test stay clean for channel choice and evaluation); which images
were flipped, and how, is recorded in the manifest columns ``noise_*``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from lofiseg.config import load_params, rate_key
from lofiseg.data.format import Dataset, DatasetWriter
from lofiseg.data.noise import corrupt, sample_rng
from stages.cli import log, run, stage_parser

NOISE_FIELDS = ("noise_rate", "noise_flipped", "noise_permutation", "noise_dropped")


def make_noisy_copy(source: Path, out: Path, rate: float, seed: int, boundary_px: int = 0,
                    drop_region_prob: float = 0.0) -> dict[str, int]:
    """Write ``out``: ``source`` with its train masks corrupted at ``rate``; returns counts."""
    src = Dataset(source)
    extra_fields = tuple(f for f in src.extra_fields if f not in NOISE_FIELDS) + NOISE_FIELDS
    counts = {"train": 0, "flipped": 0, "dropped_regions": 0}
    with DatasetWriter(out, extra_fields=extra_fields) as writer:
        for record in tqdm(src, desc=f"noise {rate:g}", unit="img", file=sys.stderr):
            image_path = src.root / record.image
            mask = src.mask(record) if record.has_mask else None
            extra = {k: v for k, v in record.extra.items() if k in extra_fields}
            extra.update(noise_rate=rate_key(rate), noise_flipped="0", noise_permutation="", noise_dropped="")
            if mask is not None and record.split == "train":
                result = corrupt(mask, rate, sample_rng(seed, record.id), boundary_px, drop_region_prob)
                mask = result.mask
                counts["train"] += 1
                counts["flipped"] += int(result.flipped)
                counts["dropped_regions"] += len(result.dropped)
                extra.update(
                    noise_flipped=str(int(result.flipped)),
                    noise_permutation=";".join(f"{a}>{b}" for a, b in result.permutation.items()),
                    noise_dropped=";".join(map(str, result.dropped)),
                )
            writer.add_encoded(record.id, image_path.read_bytes(), image_path.suffix.lstrip("."), mask,
                               split=record.split, tags=record.tags, source=record.source, extra=extra)
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, required=True, help="flip probability, one of noise.rates")
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="folder of downloaded data sets")
    parser.add_argument("--out", type=Path, required=True, help="output data set folder")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.noise
    if not any(abs(args.rate - r) < 1e-12 for r in cfg.rates):
        raise SystemExit(f"error: --rate {args.rate} is not in noise.rates {cfg.rates}")
    counts = make_noisy_copy(args.raw / cfg.dataset, args.out, args.rate, params.seed, cfg.boundary_px,
                             cfg.drop_region_prob)
    log.info("noise %g on %s: %s", args.rate, cfg.dataset, json.dumps(counts))


if __name__ == "__main__":
    sys.exit(run(main))
