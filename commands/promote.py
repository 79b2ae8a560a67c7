"""Move alias ``champion`` of a registered model by hand: promote a version, or roll back one promotion.

    python -m commands.promote --name lofiseg-deeplab --version 3 --reason "checked by eye on new photos"
    python -m commands.promote --name lofiseg-deeplab --rollback

The store is ``MLFLOW_TRACKING_URI`` (default ``./mlflow.db``). Promotion ignores the gate; the decision and
reason are tagged on the version, which remembers the champion it replaced. ``--rollback`` gives the alias back
to that previous champion.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lofiseg.cli import run
from lofiseg.track.registry import Registry, RegistryError


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="registered model name")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--version", help="version to make champion")
    action.add_argument("--rollback", action="store_true", help="champion back to the previous champion")
    parser.add_argument("--reason", default=None, help="why (tagged on the version)")
    args = parser.parse_args(argv)
    registry = Registry()
    try:
        if args.rollback:
            change = registry.rollback(args.name, args.reason)
        else:
            change = registry.promote(args.name, args.version, args.reason or "promoted by hand")
    except RegistryError as err:
        raise SystemExit(f"error: {err}") from err
    print(change.message)


if __name__ == "__main__":
    sys.exit(run(main))
