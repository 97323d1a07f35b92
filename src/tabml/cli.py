"""Command line of `python src/train.py`."""

from __future__ import annotations

import argparse
import logging
import sys

from tabml.config import ConfigError
from tabml.data import DataIntegrityError


def build_parser(usage: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python src/train.py",
        description=usage,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="OVERRIDE", help="Hydra override, e.g. model.num_leaves=63"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rerun every stage even if nothing changed (dvc repro --force)",
    )
    parser.add_argument(
        "--no-push",
        action="store_true",
        help="do not push data, outputs and run cache to the default DVC remote after a run",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="audit: rebuild the current commit in a clean clone and compare every output "
        "md5 with dvc.lock (non-zero exit on any difference)",
    )
    return parser


def main(argv: list[str], usage: str | None = None) -> int:
    args = build_parser(usage).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.verify:
        from tabml.audit import run_audit

        return run_audit()
    from tabml import pipeline

    try:
        params, changed = pipeline.compose_params(args.overrides)
        if changed:
            print("params.yaml updated")
        source = pipeline.ensure_data(params)
        if source != "workspace":
            print(f"data: {source}")
        result = pipeline.reproduce(force=args.force)
    except (ConfigError, DataIntegrityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except pipeline.StageFailedError as exc:
        print(f"error: {exc}; outputs of earlier runs are unchanged", file=sys.stderr)
        return 1
    pipeline.print_summary(result)
    if not args.no_push and (result.stages_run or source != "workspace"):
        print(pipeline.push())
    return 0
