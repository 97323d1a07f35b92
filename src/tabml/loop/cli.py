"""`tabml-loop`: continuous training from the command line.

    tabml-loop run              one iteration (what `run` does: tabml.loop.run); from cron
    tabml-loop run --dry-run    what it would do, changing nothing
    tabml-loop simulate --out DIR [--quick]   the whole loop on simulated traffic

Run from the repository root. The thresholds are conf/loop/, conf/monitor/ and conf/compare/,
composed into params.yaml and overridable like any parameter:
`tabml-loop run loop.min_new_labels=200` (the retrain uses the same overrides).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabml.errors import TabmlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tabml-loop", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="one iteration of the loop")
    run.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    run.add_argument("overrides", nargs="*", metavar="OVERRIDE", help="Hydra override")
    simulate = commands.add_parser(
        "simulate",
        help="a year of traffic in minutes: a scratch clone, a real service, a documented shift, "
        "the loop on a simulated schedule (tabml.loop.simulate)",
    )
    simulate.add_argument("--out", type=Path, required=True, help="directory for the results")
    simulate.add_argument("--quick", action="store_true", help="fewer, smaller steps (the tests)")
    simulate.add_argument("--seed", type=int, default=20260105)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        from tabml.loop.simulate import Plan, simulate

        plan = Plan.quick() if args.quick else Plan.full()
        return simulate(Path.cwd(), args.out.absolute(), plan, args.seed)
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
