"""DVC stage `pseudo_gt`: the union of every class's pseudo labels as ONE data set (Veksler Sec. 4.3).

``--parts`` holds one data set per class of ``web.classes`` (``<parts>/<class>``, written by
``pseudo_label@<class>``). Each image's mask may only hold 0 (background), its class's id in
``Params.semantic_classes()`` and 255 (ignore): "each individual image has only 2 labels"
(:mod:`lofiseg.data.pseudo_gt`). The union is written atomically (a temporary folder renamed into place) with
``classes.json`` naming the label space.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from lofiseg.config import load_params
from lofiseg.data.pseudo_gt import open_parts, write_union
from stages.cli import log, run, stage_parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--parts", type=Path, required=True, help="folder of per-class pseudo-label data sets")
    parser.add_argument("--out", type=Path, required=True, help="output data set (the union)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    classes = params.semantic_classes()
    datasets = open_parts(args.parts, classes)
    total = write_union(datasets, classes, args.out)
    per_class = {name: len(data) for name, data in datasets.items()}
    log.info("pseudo_gt: %d images %s -> %s", total, per_class, args.out)


if __name__ == "__main__":
    sys.exit(run(main))
