"""DVC stage `pseudo_label@<class>`: the class's model on its own web images -> pseudo ground truth.

Veksler Sec. 4.3: the X-CNN runs on the X web images (tagged X, in ``pseudo_label.splits``); object pixels get
X's id in the multi-class label space (``Params.semantic_classes()``), the rest background 0; optionally a
dense CRF refines the two-class probabilities; pixels less confident than ``pseudo_label.confidence`` become
255 (ignore). The output is one data set in the dataset format: the images copied byte for byte, the pseudo
labels as masks, the manifest rows with their split and tags plus the foreground and ignored fractions.
The web set's own masks (which exist for synthetic data) are never opened.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lofiseg.config import load_params
from lofiseg.data.format import IGNORE, Dataset, DatasetFormatError, DatasetWriter
from lofiseg.data.labels import class_names_json
from lofiseg.infer.pseudo_labels import label_images
from lofiseg.models.bundle import load_bundle
from lofiseg.train.loop import resolve_device
from stages.cli import log, run, stage_parser

EXTRA_FIELDS = ("class", "class_id", "foreground_fraction", "ignored_fraction")
INFO_FILE = "pseudo_label.json"


def main(argv: Sequence[str] | None = None) -> None:
    parser = stage_parser(__doc__.splitlines()[0])
    parser.add_argument("--class", dest="class_name", required=True, help="a class of web.classes")
    parser.add_argument("--data", type=Path, required=True, help="the web data set (images tagged by class)")
    parser.add_argument("--model", type=Path, required=True, help="folder holding the class's model.pt")
    parser.add_argument("--out", type=Path, required=True, help="output data set of pseudo labels")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    cfg = params.pseudo_label
    classes = params.semantic_classes()
    if args.class_name not in params.web.classes:
        raise SystemExit(f"error: --class {args.class_name!r} is not in web.classes {list(params.web.classes)}")
    class_id = classes.index(args.class_name)

    model, info = load_bundle(args.model / "model.pt")
    channel = int(info.get("channel", 1))
    image_size = info.get("image_size")
    if not isinstance(image_size, int) or model.num_classes != 2 or channel not in (0, 1):
        raise ValueError(f"{args.model / 'model.pt'}: expected a two-class model with info image_size (int) and "
                         f"channel 0|1, got {model.num_classes} classes, info {info}")
    device = resolve_device("auto")
    model.to(device)
    crf = cfg.crf_settings()

    data = Dataset(args.data)
    records = [r for r in data if args.class_name in r.tags and r.split in cfg.splits]
    if not records:
        raise DatasetFormatError(f"{args.data}: no image tagged {args.class_name!r} in splits {cfg.splits}")

    counts = {"images": 0, "foreground": 0, "ignored": 0, "pixels": 0}
    with DatasetWriter(args.out, extra_fields=EXTRA_FIELDS) as writer:
        for record, labels in label_images(model, data, records, image_size, channel, class_id, cfg.confidence,
                                           crf, cfg.batch_size, device, name=args.class_name):
            fg, ignored = int((labels == class_id).sum()), int((labels == IGNORE).sum())
            writer.copy(data, record, labels, image_shape=labels.shape,
                        extra={"class": args.class_name, "class_id": class_id,
                               "foreground_fraction": f"{fg / labels.size:.6f}",
                               "ignored_fraction": f"{ignored / labels.size:.6f}"})
            counts["images"] += 1
            counts["foreground"] += fg
            counts["ignored"] += ignored
            counts["pixels"] += labels.size
        summary = {
            "class": args.class_name, "class_id": class_id, "classes": classes, "model": str(args.model),
            "model_info": {k: info.get(k) for k in ("class", "supervision", "image_size")},
            "crf": cfg.crf, "crf_iterations": cfg.crf_iterations, "confidence": cfg.confidence,
            "splits": list(cfg.splits), "images": counts["images"],
            "foreground_fraction": counts["foreground"] / counts["pixels"],
            "ignored_fraction": counts["ignored"] / counts["pixels"],
        }
        writer.add_file("classes.json", class_names_json(classes))
        writer.add_file(INFO_FILE, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    log.info("pseudo_label %s: %d images, foreground %.3f, ignored %.3f -> %s", args.class_name,
             counts["images"], summary["foreground_fraction"], summary["ignored_fraction"], args.out)


if __name__ == "__main__":
    sys.exit(run(main))
