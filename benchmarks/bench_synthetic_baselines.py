"""How hard is the synthetic saliency set for trivial rules, and how fast is the generator?

Run: ``.venv/bin/python -m benchmarks.bench_synthetic_baselines``. Generates the default saliency test split
(``SyntheticParams()``: 80 images, 64 px, seed 0) and scores, with pysodmetrics (F-beta with beta^2 = 0.3 at
the adaptive threshold 2 * mean and its maximum over thresholds; MAE):

(a) centre priors: a central box covering 25 / 36 / 50 % of the image, and a Gaussian centre map;
(b) colour thresholds: per-image Otsu on each of R, G, B, grey, H, S, V, L*, a*, b*, keeping the pixels above,
    below, or on the smaller side of the threshold; the best (channel, rule) is chosen on this very data set
    (a generous, oracle choice: an upper-ish bound for trivial colour rules);
(c) a border-contrast map (Lab distance from the mean border colour), a classic background prior;
(d) the ground truth itself (F = 1, MAE = 0) as a check of the metric plumbing.

Writes ``benchmarks/results/bench_synthetic_baselines.md`` and ``benchmarks/results/synthetic_contact_sheet.png``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the speed figure is for one core
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from py_sod_metrics import MAE, Fmeasure  # noqa: E402
from skimage.color import rgb2hsv, rgb2lab  # noqa: E402
from skimage.filters import threshold_otsu  # noqa: E402

from lofiseg.atomic import atomic_write_text  # noqa: E402
from lofiseg.config import SyntheticParams  # noqa: E402
from lofiseg.data.format import Sample  # noqa: E402
from lofiseg.data.synthetic import generate_regions, generate_saliency, generate_scenes, generate_web  # noqa: E402
from lofiseg.viz.images import contact_sheet, save_png  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHANNELS = ("R", "G", "B", "grey", "H", "S", "V", "L*", "a*", "b*")
RULES = ("above", "below", "smaller side")
SPEED_IMAGES = 400


def score(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean adaptive F-beta, max F-beta over thresholds, and MAE of [0, 1] maps against {0, 1} masks."""
    fm, mae = Fmeasure(), MAE()
    for pred, gt in zip(maps, masks, strict=True):
        pred8 = (np.clip(pred, 0, 1) * 255 + 0.5).astype(np.uint8)
        gt8 = (gt > 0).astype(np.uint8) * 255
        fm.step(pred=pred8, gt=gt8)
        mae.step(pred=pred8, gt=gt8)
    result = fm.get_results()["fm"]
    return {"adp_f": float(result["adp"]), "max_f": float(np.max(result["curve"])),
            "mae": float(mae.get_results()["mae"])}


def centre_box(size: int, area: float) -> np.ndarray:
    side = int(round(size * np.sqrt(area)))
    lo = (size - side) // 2
    out = np.zeros((size, size), np.float64)
    out[lo:lo + side, lo:lo + side] = 1.0
    return out


def centre_gaussian(size: int, sigma_fraction: float = 0.25) -> np.ndarray:
    c = (np.arange(size) + 0.5 - size / 2) / (sigma_fraction * size)
    return np.exp(-0.5 * (c[:, None] ** 2 + c[None, :] ** 2))


def channels(image: np.ndarray) -> dict[str, np.ndarray]:
    rgb = image.astype(np.float64) / 255.0
    hsv, lab = rgb2hsv(rgb), rgb2lab(rgb)
    return {"R": rgb[..., 0], "G": rgb[..., 1], "B": rgb[..., 2], "grey": rgb.mean(axis=2),
            "H": hsv[..., 0], "S": hsv[..., 1], "V": hsv[..., 2], "L*": lab[..., 0], "a*": lab[..., 1],
            "b*": lab[..., 2]}


def otsu_map(channel: np.ndarray, rule: str) -> np.ndarray:
    if np.ptp(channel) == 0:
        return np.zeros_like(channel)
    above = channel > threshold_otsu(channel)
    if rule == "below" or (rule == "smaller side" and above.mean() > 0.5):
        above = ~above
    return above.astype(np.float64)


def border_contrast(image: np.ndarray) -> np.ndarray:
    lab = rgb2lab(image.astype(np.float64) / 255.0)
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    distance = np.linalg.norm(lab - border.mean(axis=0), axis=2)
    return distance / max(distance.max(), 1e-9)


def speed(name: str, make: Callable[[], Iterator[Sample]]) -> dict[str, float | str]:
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(1 for _ in make())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"set": name, "images": count, "wall": count / wall, "cpu": count / cpu}


def main() -> None:
    warnings.filterwarnings("ignore", message="This class will be removed")  # pysodmetrics' Fmeasure notice
    params = SyntheticParams()
    size, seed = params.image_size, 0
    # Each split has its own streams, so test-only sizes give exactly the test split of the full default set.
    test = list(generate_saliency({"train": 0, "val": 0, "test": params.saliency.test}, size, seed))
    masks = [s.mask for s in test]
    areas = np.array([m.mean() for m in masks])
    touching = np.mean([m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for m in masks])

    rows: list[tuple[str, dict[str, float]]] = []
    for area in (0.25, 0.36, 0.5):
        rows.append((f"(a) centre box, {area:.0%} of the image", score([centre_box(size, area)] * len(test), masks)))
    rows.append(("(a) Gaussian centre map, sigma = size / 4", score([centre_gaussian(size)] * len(test), masks)))

    per_image = [channels(s.image) for s in test]
    colour: dict[tuple[str, str], dict[str, float]] = {}
    for channel in CHANNELS:
        for rule in RULES:
            colour[channel, rule] = score([otsu_map(c[channel], rule) for c in per_image], masks)
    best = max(colour, key=lambda key: colour[key]["adp_f"])
    rows.append((f"(b) best colour threshold: Otsu on {best[0]}, {best[1]} (chosen on this set)", colour[best]))
    rows.append(("(c) border-contrast map (Lab distance to mean border colour)",
                 score([border_contrast(s.image) for s in test], masks)))
    rows.append(("(d) ground truth", score([m.astype(np.float64) for m in masks], masks)))

    speeds = [
        speed("saliency", lambda: generate_saliency({"test": SPEED_IMAGES}, size, seed)),
        speed("web", lambda: generate_web(params.classes, SPEED_IMAGES // 5, 0, params.web.confuser_prob, 0, size,
                                          seed)),
        speed("scenes", lambda: generate_scenes(params.classes, {"test": SPEED_IMAGES}, params.scenes.min_objects,
                                                params.scenes.max_objects, size, seed)),
        speed("regions", lambda: generate_regions({"test": SPEED_IMAGES}, params.regions.min_regions,
                                                  params.regions.max_regions, size, seed)),
    ]

    lines = [
        "# Synthetic saliency set vs. trivial rules",
        "",
        f"Default saliency test split: {len(test)} images, {size} px, seed {seed} (`SyntheticParams()`). "
        f"Object area: median {np.median(areas):.1%}, range {areas.min():.1%}-{areas.max():.1%}; "
        f"{touching:.0%} of objects touch the border.",
        "",
        "F-beta with beta^2 = 0.3 (pysodmetrics `Fmeasure`): `adp F` at the adaptive threshold 2 * mean(map), "
        "`max F` the maximum over thresholds of the mean F curve; `MAE` from pysodmetrics `MAE`.",
        "",
        "| baseline | adp F | max F | MAE |",
        "|---|---|---|---|",
        *[f"| {name} | {r['adp_f']:.3f} | {r['max_f']:.3f} | {r['mae']:.3f} |" for name, r in rows],
        "",
        "Colour thresholds, adaptive F per channel (Otsu per image; above / below / smaller side):",
        "",
        "| channel | above | below | smaller side |",
        "|---|---|---|---|",
        *[f"| {c} | " + " | ".join(f"{colour[c, r]['adp_f']:.3f}" for r in RULES) + " |" for c in CHANNELS],
        "",
        f"## Generation speed ({size} px, one process, OMP_NUM_THREADS=1)",
        "",
        "`wall` counts elapsed time (the machine is shared, so it varies run to run); `cpu` counts this process's "
        "CPU time.",
        "",
        "| set | images | images/s (wall) | images/s (cpu) |",
        "|---|---|---|---|",
        *[f"| {s['set']} | {s['images']} | {s['wall']:.0f} | {s['cpu']:.0f} |" for s in speeds],
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "bench_synthetic_baselines.md", "\n".join(lines))

    web = list(generate_web(params.classes, 2, 2, params.web.confuser_prob, 0, size, seed))
    sheet = contact_sheet({
        "saliency": test[:10],
        "web": web,
        "scenes": list(generate_scenes(params.classes, {"test": 10}, params.scenes.min_objects,
                                       params.scenes.max_objects, size, seed)),
        "regions": list(generate_regions({"test": 10}, params.regions.min_regions, params.regions.max_regions,
                                         size, seed)),
    }, per_set=10)
    save_png(RESULTS / "synthetic_contact_sheet.png", sheet)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
