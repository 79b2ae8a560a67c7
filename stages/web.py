"""DVC stage `web`: the per-class web image sets (Veksler Sec. 4.3) as one data set tagged by class.

Each class of ``web.classes`` comes from its source (the synthetic web set in ``--raw/web``, a local folder, an
S3 prefix, a URL manifest, or a downloaded data set ``--raw/<name>``'s images with a tag); downloads are cached
in ``--cache`` so a re-run fetches only what is missing.
``--report`` gets ``report.json`` (accepted per class, every rejection with its reason), ``rejections.md`` and
``contact_sheet.png`` (a row of images per class).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lofiseg.atomic import atomic_write_json, atomic_write_text
from lofiseg.config import load_params
from lofiseg.data.format import MANIFEST, SPLITS, Dataset, DatasetFormatError, Sample
from lofiseg.data.web import WebReport, collect_web_images
from lofiseg.viz.figures import markdown_table
from lofiseg.viz.images import contact_sheet, save_png
from stages.cli import log, run, stage_parser

PREVIEW_PER_CLASS = 8


def split_counts(dataset: Dataset, classes: Sequence[str]) -> dict[str, dict[str, int]]:
    """Images per class and split in the built data set."""
    return {c: {s: sum(c in r.tags for r in dataset.split(s)) for s in SPLITS} for c in classes}


def rejections_markdown(report: WebReport, splits: dict[str, dict[str, int]]) -> str:
    """The report for people: a table per class, then every rejected item with its reason."""
    rows = [[c, str(n), str(report.rejected_count(c)), *(str(splits[c][s]) for s in SPLITS)]
            for c, n in report.accepted.items()]
    text = "# Web images\n\n" + markdown_table(["class", "accepted", "rejected", *SPLITS], rows)
    text += f"\n## Rejected items ({len(report.rejected)})\n\n"
    if report.rejected:
        escape = str.maketrans({"|": "\\|", "\n": " "})
        text += markdown_table(["class", "source", "reason"],
                               [[r.cls, f"`{r.source.translate(escape)}`", r.reason.translate(escape)]
                                for r in report.rejected])
    else:
        text += "None.\n"
    return text


def class_previews(dataset: Dataset, classes: Sequence[str], count: int = PREVIEW_PER_CLASS) -> dict[str, list]:
    """The first ``count`` images of each class, train split first (masks where the data set has them)."""
    previews = {}
    for cls in classes:
        records = [r for r in dataset if cls in r.tags][:count]
        previews[cls] = [Sample(r.id, dataset.image(r), dataset.mask(r) if r.has_mask else None, r.split, r.tags)
                         for r in records]
    return previews


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="downloaded data sets (raw/web)")
    parser.add_argument("--out", type=Path, default=Path("data/web"), help="the web data set to build")
    parser.add_argument("--cache", type=Path, default=Path("data/downloads/web"), help="download cache")
    parser.add_argument("--report", type=Path, default=Path("reports/web"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    classes = list(params.web.classes)
    synthetic = args.raw / "web"
    uses_synthetic = [c for c, s in params.web.classes.items() if s.kind == "synthetic"]
    if uses_synthetic and not (synthetic / MANIFEST).is_file():
        raise DatasetFormatError(f"{synthetic / MANIFEST}: web.classes {uses_synthetic} come from the synthetic "
                                 f"web set, which is missing; run the download stage first")

    report = collect_web_images(params.web, args.out, args.cache, synthetic=synthetic,
                                s3_endpoint_url=params.download.s3_endpoint_url, datasets=args.raw)
    dataset = Dataset(args.out)
    splits = split_counts(dataset, classes)
    atomic_write_json(args.report / "report.json", {**report.as_dict(), "splits": splits})
    atomic_write_text(args.report / "rejections.md", rejections_markdown(report, splits))
    save_png(args.report / "contact_sheet.png", contact_sheet(class_previews(dataset, classes),
                                                              per_set=PREVIEW_PER_CLASS))
    empty = [c for c in classes if report.accepted.get(c, 0) == 0]
    if empty:
        log.warning("web classes with no accepted image: %s (train_single will fail for them)", empty)
    log.info("web: %s", json.dumps(report.as_dict()["classes"]))


if __name__ == "__main__":
    sys.exit(run(main))
