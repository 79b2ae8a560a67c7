"""DVC stage `download`: every enabled data set in params, from its source, into the dataset format.

Synthetic sets are generated here (no network); local, http(s) and s3 sets are fetched into a download cache
(``data/downloads``, kept across runs so nothing is fetched twice), verified, unpacked and normalised. The
whole ``--out`` folder is swapped in atomically, and a contact sheet of every set is written to ``--report``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from lofiseg.atomic import atomic_dir, atomic_write_json
from lofiseg.config import DatasetSpec, Params, load_params
from lofiseg.data import synthetic
from lofiseg.data.format import Dataset, DatasetWriter, Sample
from lofiseg.viz.images import contact_sheet, save_png
from stages.cli import log, run, stage_parser


def synthetic_samples(spec: DatasetSpec, params: Params) -> Iterator[Sample]:
    """The generator a synthetic spec names, with its knobs from the ``synthetic`` section."""
    cfg, size, seed = params.synthetic, params.synthetic.image_size, params.seed
    if spec.generator == "saliency":
        return synthetic.generate_saliency(cfg.saliency, image_size=size, seed=seed)
    if spec.generator == "web":
        return synthetic.generate_web(cfg.classes, per_class=cfg.web.per_class, negatives=cfg.web.negatives,
                                      confuser_prob=cfg.web.confuser_prob,
                                      test_per_class=cfg.web.test_per_class, image_size=size, seed=seed,
                                      layout=synthetic.WebLayout(area=tuple(cfg.web.object_area),
                                                                 border_prob=cfg.web.border_prob,
                                                                 spread=cfg.web.centre_spread))
    if spec.generator == "scenes":
        return synthetic.generate_scenes(cfg.classes, cfg.scenes, min_objects=cfg.scenes.min_objects,
                                         max_objects=cfg.scenes.max_objects, image_size=size, seed=seed)
    if spec.generator == "regions":
        return synthetic.generate_regions(cfg.regions, min_regions=cfg.regions.min_regions,
                                          max_regions=cfg.regions.max_regions, image_size=size, seed=seed)
    raise ValueError(f"unknown synthetic generator {spec.generator!r}")


def write_synthetic(name: str, spec: DatasetSpec, params: Params, out: Path) -> None:
    with DatasetWriter(out) as writer:
        for sample in tqdm(synthetic_samples(spec, params), desc=f"synthetic {name}", unit="img", file=sys.stderr):
            writer.add(sample)


def preview_samples(ds: Dataset, count: int = 8) -> list[Sample]:
    """Evenly spaced samples of a data set, for the contact sheet."""
    records = ds.records[:: max(1, len(ds) // count)][:count]
    return [Sample(r.id, ds.image(r), ds.mask(r) if r.has_mask else None, r.split, r.tags) for r in records]


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/raw"))
    parser.add_argument("--cache", type=Path, default=Path("data/downloads"), help="download cache")
    parser.add_argument("--report", type=Path, default=Path("reports/data"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    datasets = params.download.enabled()

    previews: dict[str, list[Sample]] = {}
    summary: dict[str, dict[str, int]] = {}
    with atomic_dir(args.out) as tmp:
        for name, spec in datasets.items():
            log.info("data set %s: source %s", name, spec.source)
            if spec.source == "synthetic":
                write_synthetic(name, spec, params, tmp / name)
            else:
                from lofiseg.data.layouts import build_dataset  # network/archive code only when needed

                build_dataset(name, spec, tmp / name, args.cache, params.download)
            ds = Dataset(tmp / name)
            ds.validate(check_sha256=False)
            previews[name] = preview_samples(ds)
            summary[name] = {split: len(ds.split(split)) for split in ("train", "val", "test")}
    save_png(args.report / "contact_sheet.png", contact_sheet(previews))
    atomic_write_json(args.report / "datasets.json", summary)
    log.info("data sets: %s", json.dumps(summary))


if __name__ == "__main__":
    sys.exit(run(main))
