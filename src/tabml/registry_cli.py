"""`tabml-registry`: list model versions, promote one to champion, roll champion back, show the
history of alias moves, and export the served versions as a bundle.

The registered model name and the tracking URI default to those of params.yaml in the current
directory (`tracking.registered_model`, and `tracking.uri` / MLFLOW_TRACKING_URI / the local
sqlite store), so inside the project no option is needed.

  tabml-registry list
  tabml-registry promote 3 --reason "approved after shadow test"
  tabml-registry rollback --reason "v4 misbehaves on new traffic"
  tabml-registry history
  tabml-registry track              # log the workspace model after a plain `dvc repro`

  tabml-registry export --alias champion --alias candidate --out /srv/tabml/bundle \
      --route canary:0.1
  tabml-registry route canary:0.5 --bundle /srv/tabml/bundle --reload-pid "$(pgrep -o tabml-serve)"
  tabml-registry promote 4 --bundle /srv/tabml/bundle --reload-url http://tabml-serve:8000
  tabml-registry rollback --bundle /srv/tabml/bundle --reload-pid "$(pgrep -o tabml-serve)"

`export` writes a bundle (tabml.bundle): the first alias's version as champion, the second's as
challenger, and `--route` the routing between them that the bundle carries (a service started
without `--route`/`TABML_ROUTE` follows it, reload after reload). `route` rewrites only a
bundle's route (`default`: none of its own). `--bundle` on promote and rollback rewrites it after
moving the alias: the new champion, and the bundle's challenger (and route) unless it has just
become champion. `--reload-url` POSTs
<url>/admin/reload with the token in TABML_ADMIN_TOKEN, `--reload-pid` sends SIGHUP: the service
loads the new bundle (tabml.service_reload).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from tabml.config import PARAMS_FILE, ConfigError, load_params
from tabml.errors import TabmlError
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
    _bundle_options(promote, "--bundle", "rewrite this bundle with the new champion")
    rollback = commands.add_parser("rollback", help="give champion back to the previous one")
    rollback.add_argument("--reason", default="rolled back by hand")
    _bundle_options(rollback, "--bundle", "rewrite this bundle with the new champion")
    export = commands.add_parser("export", help="write the versions of aliases as a bundle")
    export.add_argument(
        "--alias",
        action="append",
        required=True,
        help="champion's alias, then (optional, repeat the option) the challenger's",
    )
    export.add_argument("--route", help="champion | canary:<fraction> | shadow, kept in the bundle")
    _bundle_options(export, "--out", "the bundle directory to write", required=True)
    route = commands.add_parser(
        "route", help="change the route a bundle carries (no registry needed)"
    )
    route.add_argument("route", help="champion | canary:<fraction> | shadow, or `default` for none")
    _bundle_options(route, "--bundle", "the bundle to rewrite", required=True)
    commands.add_parser("history", help="every recorded alias move, oldest first")
    commands.add_parser(
        "track",
        help="make sure the workspace model has its MLflow run (log, register and gate it if "
        "not); `python src/train.py` does this after every run",
    )
    return parser


def _bundle_options(
    parser: argparse.ArgumentParser, flag: str, help: str, required: bool = False
) -> None:
    parser.add_argument(flag, dest="bundle", type=Path, required=required, help=help)
    parser.add_argument("--reload-url", help="then POST <url>/admin/reload (TABML_ADMIN_TOKEN)")
    parser.add_argument("--reload-pid", type=int, help="then send SIGHUP to this service process")


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
    parser = build_parser()
    args = parser.parse_args(argv)
    reloads = getattr(args, "reload_url", None) or getattr(args, "reload_pid", None)
    if reloads and getattr(args, "bundle", None) is None:
        parser.error("--reload-url and --reload-pid need --bundle")
    if args.command == "route":
        return _reroute(args)
    try:
        uri, name = _defaults(args)
        check_reachable(uri)
        token = _admin_token(args)
    except (ConfigError, TrackingUnavailableError, TabmlError) as exc:
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
        if args.command in ("promote", "rollback", "export") and args.bundle is not None:
            return _write_bundle(client, name, args, token)
    except TabmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (registry.RegistryError, MlflowException) as exc:
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    return 0


def _admin_token(args: argparse.Namespace) -> str | None:
    if not getattr(args, "reload_url", None):
        return None
    from tabml.service_reload import admin_token

    return admin_token()


def _write_bundle(client, name: str, args: argparse.Namespace, token: str | None) -> int:
    """Export (or, after promote and rollback, rewrite) the bundle, then ask for a reload."""
    from tabml.bundle_export import export_aliases, rewrite_bundle

    if args.command == "export":
        bundle = export_aliases(client, name, args.alias, args.bundle, args.route)
    else:
        bundle = rewrite_bundle(client, name, args.bundle)
    _wrote(args.bundle, bundle)
    return _reload(args, token)


def _reroute(args: argparse.Namespace) -> int:
    from tabml.bundle import reroute_bundle

    try:
        token = _admin_token(args)
        bundle = reroute_bundle(args.bundle, None if args.route == "default" else args.route)
    except TabmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _wrote(args.bundle, bundle)
    return _reload(args, token)


def _wrote(path: Path, bundle) -> None:
    roles = ", ".join(f"{role} {version}" for role, version in bundle.roles.items())
    route = f", route {bundle.route}" if bundle.route else ""
    print(f"wrote bundle {path}: {roles}{route}")


def _reload(args: argparse.Namespace, token: str | None) -> int:
    """Ask the service to load the bundle just written, as the options say."""
    from tabml.service_reload import ReloadError, reload_by_signal, reload_over_http

    try:
        if args.reload_url:
            assert token is not None
            answer = reload_over_http(args.reload_url, token)
            print(f"reloaded {args.reload_url}: {answer}")
        if args.reload_pid:
            reload_by_signal(args.reload_pid)
            print(f"sent SIGHUP to {args.reload_pid}")
    except ReloadError as exc:
        print(f"error: bundle written, but the reload failed: {exc}", file=sys.stderr)
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
