"""DVC stage `noise@<rate>`: a low-fidelity copy of a data set with region labels flipped at one rate.

Only the train split is corrupted (val and test stay clean for channel choice and evaluation); which images
were flipped, and how, is recorded in the manifest columns ``noise_*``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lofiseg.config import load_params
from lofiseg.data.noise import make_noisy_copy
from stages.cli import log, run, stage_parser


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
