"""`tabml-serve`: start the prediction service on the trained `models/` with uvicorn.

    tabml-serve                         # http://127.0.0.1:8000, one worker
    tabml-serve --host 0.0.0.0 --port 8080 --workers 4
    tabml-serve --prediction-log-dir /var/log/tabml   # also log every prediction
    tabml-serve --bundle /srv/tabml/bundle --route canary:0.1   # champion + challenger

Every setting is also an environment variable (TABML_MODEL_DIR, TABML_MAX_BATCH, ...; see
`tabml.serving.settings`); options given here override them and are passed on to the workers.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import logging.config
import os
import shutil
import sys
import tempfile

from tabml.serving.worker import freeze_loaded_objects, prepare_process

log = logging.getLogger("tabml.serving")

# option → environment variable read by ServingSettings (in this process and in every worker)
_SETTING_OPTIONS = {
    "model_dir": "TABML_MODEL_DIR",
    "dvc_lock": "TABML_DVC_LOCK",
    "bundle": "TABML_BUNDLE",
    "challenger": "TABML_CHALLENGER",
    "challenger_dvc_lock": "TABML_CHALLENGER_DVC_LOCK",
    "route": "TABML_ROUTE",
    "metrics_file": "TABML_METRICS_FILE",
    "max_batch": "TABML_MAX_BATCH",
    "threshold": "TABML_THRESHOLD",
    "model_name": "TABML_MODEL_NAME",
    "model_version": "TABML_MODEL_VERSION",
    "log_level": "TABML_LOG_LEVEL",
    "prediction_log_dir": "TABML_PREDICTION_LOG_DIR",
    "prediction_log_sample": "TABML_PREDICTION_LOG_SAMPLE",
    "prediction_log_queue": "TABML_PREDICTION_LOG_QUEUE",
    "prediction_log_segment_bytes": "TABML_PREDICTION_LOG_SEGMENT_BYTES",
    "prediction_log_segment_seconds": "TABML_PREDICTION_LOG_SEGMENT_SECONDS",
    "feedback_index_size": "TABML_FEEDBACK_INDEX_SIZE",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tabml-serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes (default 1; each loads the model)",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="event loop (default: uvloop if installed)",
    )
    parser.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=5,
        help="seconds an idle keep-alive connection stays open (default 5)",
    )
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        help="most connections and tasks at once per worker; beyond it requests get a fast 503 "
        "instead of queueing (default: unlimited)",
    )
    parser.add_argument(
        "--timeout-graceful-shutdown",
        type=int,
        default=30,
        help="on SIGTERM, seconds to let in-flight requests finish before closing (default 30)",
    )
    parser.add_argument("--model-dir", help="artifacts directory (default models/)")
    parser.add_argument("--dvc-lock", help="dvc.lock to check artifact md5 against")
    parser.add_argument("--metrics-file", help="test metrics for /metadata")
    parser.add_argument("--max-batch", type=int, help="most records per request (default 10000)")
    parser.add_argument("--threshold", type=float, help="decision threshold override")
    parser.add_argument("--model-name", help="name in responses and the v2 protocol")
    parser.add_argument("--model-version", help="version in responses (default: model md5)")
    parser.add_argument(
        "--allow-md5-mismatch",
        action="store_true",
        help="serve artifacts that do not match dvc.lock (not for production)",
    )
    parser.add_argument("--log-level", help="INFO (default), DEBUG, WARNING, ...")
    versions = parser.add_argument_group(
        "champion and challenger (docs/serving.md; reload: SIGHUP, or POST /admin/reload with "
        "TABML_ADMIN_TOKEN)"
    )
    versions.add_argument(
        "--bundle", help="bundle directory (default: the models directory as a one-version bundle)"
    )
    versions.add_argument(
        "--challenger",
        help="challenger: a models directory from another checkout, or a bundle (its champion); "
        "overrides the bundle's challenger",
    )
    versions.add_argument(
        "--challenger-dvc-lock", help="dvc.lock for --challenger (default: its ../dvc.lock)"
    )
    versions.add_argument(
        "--route",
        help="champion | canary:<fraction>, e.g. canary:0.1 (sticky by X-Routing-Key) | shadow "
        "(default: the bundle's route, followed on reload; else champion)",
    )
    monitoring = parser.add_argument_group("monitoring (docs/monitoring.md)")
    monitoring.add_argument(
        "--prediction-log-dir", help="write prediction and feedback events here (default: off)"
    )
    monitoring.add_argument(
        "--prediction-log-sample",
        type=float,
        help="share of prediction requests logged and labellable on /feedback (default 1.0)",
    )
    monitoring.add_argument(
        "--prediction-log-queue",
        type=int,
        help="most records waiting to be written; beyond, events are dropped (default 20000)",
    )
    monitoring.add_argument(
        "--prediction-log-segment-bytes",
        type=int,
        help="close a log segment at about this size (default 64 MiB)",
    )
    monitoring.add_argument(
        "--prediction-log-segment-seconds",
        type=float,
        help="and at the latest after this many seconds (default 300)",
    )
    monitoring.add_argument(
        "--feedback-index-size",
        type=int,
        help="recent predictions per worker /feedback can label (default 500000, 19 bytes each)",
    )
    monitoring.add_argument(
        "--no-live-monitoring",
        action="store_true",
        help="no drift or realized-metric windows and no /feedback (the log still works)",
    )
    return parser


def _export_options(args: argparse.Namespace) -> None:
    for option, variable in _SETTING_OPTIONS.items():
        value = getattr(args, option)
        if value is not None:
            os.environ[variable] = str(value)
    if args.allow_md5_mismatch:
        os.environ["TABML_ALLOW_MD5_MISMATCH"] = "1"
    if args.no_live_monitoring:
        os.environ["TABML_LIVE_MONITORING"] = "0"


def _share_metrics_across_workers() -> None:
    """prometheus-client multiprocess mode: workers write samples to one directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory = tempfile.mkdtemp(prefix="tabml-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    _export_options(args)
    prepare_process()

    import uvicorn
    from pydantic import ValidationError

    from tabml.errors import TabmlError
    from tabml.serving.logs import logging_config
    from tabml.serving.protocol import best_protocol
    from tabml.serving.provenance import ArtifactIntegrityError
    from tabml.serving.settings import ServingSettings

    try:
        settings = ServingSettings()
    except ValidationError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 2
    log_config = logging_config(settings.log_level)
    logging.config.dictConfig(log_config)
    common = {
        "host": args.host,
        "port": args.port,
        "log_config": log_config,
        "access_log": False,
        "http": best_protocol(),
        "loop": args.loop,
        "lifespan": "on",
        "timeout_keep_alive": args.timeout_keep_alive,
        "limit_concurrency": args.limit_concurrency,
        "timeout_graceful_shutdown": args.timeout_graceful_shutdown,
        "server_header": False,
    }
    try:
        if args.workers == 1:
            from tabml.serving.app import create_app

            app = create_app(settings)
            freeze_loaded_objects()
        else:  # check once here, with a clear message, before the workers load it again
            from tabml.serving.versions import ModelSources, load_served_models

            load_served_models(ModelSources.from_settings(settings), warm_up=False)
    except (TabmlError, ArtifactIntegrityError) as exc:
        log.error("cannot start: %s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.workers == 1:
        uvicorn.run(app, **common)
    else:
        from tabml.serving.supervisor import run_workers

        _share_metrics_across_workers()
        run_workers(args.workers, **common)  # uvicorn's supervisor; SIGHUP reloads every worker
    return 0


if __name__ == "__main__":
    sys.exit(main())
