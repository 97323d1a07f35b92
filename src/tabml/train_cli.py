"""Command line of `python src/train.py`."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from tabml.config import PARAMS_FILE, ConfigError, Params
from tabml.data import DataIntegrityError
from tabml.stage_deps import update_dvc_yaml
from tabml.track import Preloader
from tabml.tracking_store import TrackingUnavailableError, check_reachable, resolve_tracking_uri


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
        "--no-promote",
        action="store_true",
        help="track and gate a new model but never move `champion` (e.g. pull-request builds "
        "against a shared tracking server)",
    )
    parser.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="sweep: run every combination of the overrides (a=1,2 b=x,y) as a queued DVC "
        "experiment, then print them sorted by the gate metric",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        help="with --multirun: queue workers running experiments in parallel (default 1; "
        "DVC's queue is racy with more)",
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
    # DVC prints its own progress through its own handler; only this package's loggers need one.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package_log = logging.getLogger("tabml")
    package_log.addHandler(handler)
    package_log.setLevel(logging.INFO)
    if args.verify:
        from tabml.audit import run_audit

        return run_audit()
    from tabml import pipeline

    try:
        if args.multirun:
            return _sweep(args)
        params, changed = pipeline.compose_params(args.overrides)
        if changed:
            print("params.yaml updated")
        # A tracking server that does not answer fails the run here, not after training.
        check_reachable(
            resolve_tracking_uri(params.tracking.uri),
            require_server=params.tracking.require_server,
        )
        updated = update_dvc_yaml()
        if updated:
            print(f"dvc.yaml: code deps of {', '.join(updated)} updated from their imports")
        data = pipeline.ensure_data(params)
        if data.source != "workspace":
            print(f"data: {data.source}")
        preloader = Preloader(resolve_tracking_uri(params.tracking.uri), params.tracking.experiment)
        try:
            result = pipeline.reproduce(
                force=args.force, new_data_version=data.new_version, dataset=params.dataset
            )
        finally:
            stages_done = time.perf_counter()
            preloader.cancel()
    except (ConfigError, DataIntegrityError, TrackingUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except pipeline.StageFailedError as exc:
        print(f"error: {exc}; outputs of earlier runs are unchanged", file=sys.stderr)
        return 1
    pipeline.print_summary(result)
    status = _track(params, stages_done, promote=not args.no_promote)
    if not args.no_push and (result.stages_run or data.source != "workspace"):
        print(pipeline.push(params.dataset))
    return status


def _track(params: Params, stages_done: float, promote: bool) -> int:
    """Make sure the workspace model has its MLflow run (after every run, whatever DVC ran)."""
    from tabml.lineage import git_lineage
    from tabml.track import TrackingError, raw_params_of, track_model

    uri = resolve_tracking_uri(params.tracking.uri)
    try:
        tracked = track_model(
            params,
            raw_params_of(PARAMS_FILE),
            uri,
            git_lineage(),
            promote=promote,
            context="" if promote else "--no-promote: promote after review",
        )
    except (TrackingError, TrackingUnavailableError) as exc:
        print(
            f"error: tracking in {uri} failed: {exc}; the model is trained and its outputs are "
            "kept; rerun `python src/train.py` to track it",
            file=sys.stderr,
        )
        return 1
    print("\n".join(tracked.lines))
    if tracked.new:
        print(f"tracking took {time.perf_counter() - stages_done:.2f} s after the stages")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from tabml import sweep

    if args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1 (got {args.jobs})")
    return sweep.run_sweep(args.overrides, jobs=args.jobs)
