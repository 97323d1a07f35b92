"""`tabml-loop`: continuous training from the command line.

    tabml-loop run              one iteration (what `run` does: tabml.loop.run); from cron
    tabml-loop run --dry-run    what it would do, changing nothing

Run from the repository root. The thresholds are conf/loop/, conf/monitor/ and conf/compare/,
composed into params.yaml and overridable like any parameter:
`tabml-loop run loop.min_new_labels=200` (the retrain uses the same overrides).
"""

from __future__ import annotations

import argparse
import sys

from tabml.errors import TabmlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tabml-loop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one iteration of the loop")
    run.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    run.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra override")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tabml.loop.run import run_iteration
    from tabml.pipeline import compose_params

    try:
        params, _ = compose_params(args.overrides)
        return run_iteration(params, args.overrides, dry_run=args.dry_run)
    except TabmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
