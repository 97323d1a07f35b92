"""`tabml-registry`: list model versions, promote one to champion, roll champion back, show the
history of alias moves.

The registered model name and the tracking URI default to those of params.yaml in the current
directory (`tracking.registered_model`, and `tracking.uri` / MLFLOW_TRACKING_URI / the local
sqlite store), so inside the project no option is needed.

  tabml-registry list
  tabml-registry promote 3 --reason "approved after shadow test"
  tabml-registry rollback --reason "v4 misbehaves on new traffic"
  tabml-registry history
  tabml-registry track              # log the workspace model after a plain `dvc repro`
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from tabml.config import PARAMS_FILE, ConfigError, load_params
from tabml.tracking_store import TrackingUnavailableError, check_reachable, resolve_tracking_uri


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tabml-registry",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--name", help="registered model (default: from params.yaml)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: as the pipeline)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions with aliases, gate decision and metric")
    promote = commands.add_parser("promote", help="make a version champion")
    promote.add_argument("version")
    promote.add_argument("--reason", default="promoted by hand")
    promote.add_argument(
        "--force", action="store_true", help="promote even if the version failed its gate"
    )
    rollback = commands.add_parser("rollback", help="give champion back to the previous one")
    rollback.add_argument("--reason", default="rolled back by hand")
    commands.add_parser("history", help="every recorded alias move, oldest first")
    commands.add_parser(
        "track",
        help="make sure the workspace model has its MLflow run (log, register and gate it if "
        "not); `python src/train.py` does this after every run",
    )
    return parser


def _defaults(args: argparse.Namespace) -> tuple[str, str]:
    configured_uri, name = None, args.name
    if Path(PARAMS_FILE).exists():
        tracking = load_params().tracking
        configured_uri, name = tracking.uri, name or tracking.registered_model
    if not name:
        raise ConfigError(f"no {PARAMS_FILE} here: pass --name")
    return args.tracking_uri or resolve_tracking_uri(configured_uri), name


def _when(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_versions(client, name: str) -> None:
    from tabml.registry import CHAMPION

    model = client.get_registered_model(name)
    aliases_of: dict[str, list[str]] = {}
    for alias, version in sorted(model.aliases.items()):
        aliases_of.setdefault(str(version), []).append(alias)
    versions = sorted(
        client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)
    )
    rows = [("version", "aliases", "gate", "metric", "created (UTC)", "dvc exp", "run")]
    for version in versions:
        run = client.get_run(version.run_id) if version.run_id else None
        tags = version.tags
        metric = tags.get("gate.metric", "")
        rows.append(
            (
                f"v{version.version}",
                ",".join(aliases_of.get(str(version.version), [])) or "-",
                tags.get("gate.decision", "-"),
                f"{metric} {tags['gate.value']}" if "gate.value" in tags else "-",
                _when(version.creation_timestamp),
                (run.data.tags.get("dvc_exp_name", "-") if run else "-"),
                version.run_id or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    if CHAMPION not in model.aliases:
        print(f"({name} has no champion)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        uri, name = _defaults(args)
        check_reachable(uri)
    except (ConfigError, TrackingUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.command == "track":
        return _track(uri)

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tabml import registry

    client = MlflowClient(uri, registry_uri=uri)
    try:
        if args.command == "list":
            print_versions(client, name)
        elif args.command == "history":
            for move in registry.alias_history(client, name):
                previous = f"v{move.previous}" if move.previous else "-"
                print(
                    f"{move.at}  {move.alias:<9} {previous:>5} -> v{move.version:<4} "
                    f"{move.action:<8} by {move.by}: {move.reason}"
                )
        elif args.command == "promote":
            move = registry.promote(client, name, args.version, args.reason, args.force)
            print(f"{name}: champion v{move.previous or '-'} -> v{move.version}")
        elif args.command == "rollback":
            move = registry.rollback(client, name, args.reason)
            print(f"{name}: champion v{move.previous} -> v{move.version} (rollback)")
    except registry.RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except MlflowException as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _track(uri: str) -> int:
    from tabml.lineage import git_lineage
    from tabml.track import TrackingError, raw_params_of, track_model

    try:
        tracked = track_model(load_params(), raw_params_of(PARAMS_FILE), uri, git_lineage())
    except (TrackingError, ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(tracked.lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
