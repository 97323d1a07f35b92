"""Code dependencies of the pipeline stages, derived from what each stage module imports.

A stage must rerun when any code it executes changes; a hand-kept `deps` list in `dvc.yaml`
goes stale (an edit to `tabml.model.predict_proba` once left `evaluate` skipped and stale metrics
in front of the gate). So the `src/tabml/...` entries of every stage's `deps` are derived: the
stage command's module (`python -m tabml.stages.<name>`) plus the transitive closure of the
`tabml` modules it imports, found by reading the import statements (lazy imports inside
functions included, `if TYPE_CHECKING:` blocks excluded: they never run), and the packages'
`__init__.py` files that importing them executes.

`python src/train.py` rewrites the lists before every run (like params.yaml, only when they
change), so they cannot be forgotten; `python -m tabml.stage_deps --check` fails when they
drift (the test suite runs it) and `--write` fixes them by hand.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from tabml.atomic import write_text_atomic
from tabml.layout import DVC_YAML

PACKAGE = "tabml"
SOURCE_ROOT = Path("src")
_STAGE_MODULE = re.compile(r"python -m ((?:tabml)(?:\.\w+)+)")


def module_file(module: str, root: Path = SOURCE_ROOT) -> Path | None:
    """The file that defines `module` under `root` (a module or a package's __init__)."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every module name an import statement in `tree` may load (run-time imports only)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                anchor = parts if is_package else parts[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield base
            # `from pkg import name` loads pkg.name when it is a submodule
            yield from (f"{base}.{alias.name}" for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))


def code_dependencies(module: str, root: Path = SOURCE_ROOT) -> list[Path]:
    """Sorted source files `module` executes from this package, itself included."""
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        path = module_file(name, root)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        tree = ast.parse(path.read_text(), filename=str(path))
        pending.extend(_imported_names(tree, name, path.name == "__init__.py"))
    return sorted(set(seen.values()))


def stage_module(cmd: str) -> str | None:
    match = _STAGE_MODULE.search(" ".join(cmd.split()))
    return match.group(1) if match else None


def _is_code_dep(dep: str) -> bool:
    return dep.startswith(f"{SOURCE_ROOT.as_posix()}/{PACKAGE}/") and dep.endswith(".py")


def derived_deps(stage: dict, project: Path = Path(".")) -> list[str] | None:
    """The stage's deps with its code entries replaced by the derived ones (None: not ours).
    Paths are relative to `project`, the directory holding dvc.yaml and src/."""
    module = stage_module(str(stage.get("cmd", "")))
    if module is None:
        return None
    others = [str(d) for d in stage.get("deps", []) if not _is_code_dep(str(d))]
    code = code_dependencies(module, project / SOURCE_ROOT)
    return others + [path.relative_to(project).as_posix() for path in code]


def _stages(dvc_yaml: Path) -> dict:
    import yaml

    return (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})


def stale_stages(project: Path = Path(".")) -> dict[str, list[str]]:
    """Stage → its derived deps, for every stage whose `deps` differ from them."""
    stale = {}
    for name, stage in _stages(project / DVC_YAML).items():
        wanted = derived_deps(stage, project)
        if wanted is not None and [str(d) for d in stage.get("deps", [])] != wanted:
            stale[name] = wanted
    return stale


def _replace_deps(text: str, stage: str, deps: list[str]) -> str:
    """Swap the items of one stage's `deps:` list in the text, leaving every other line (and
    comment) of dvc.yaml as it was; a YAML round trip would reflow the stage commands."""
    lines = text.splitlines(keepends=True)
    header = re.compile(rf"^(\s+){re.escape(stage)}:\s*(#.*)?$")
    for i, line in enumerate(lines):
        match = header.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        for j in range(i + 1, len(lines)):
            current = lines[j]
            if current.strip() and len(current) - len(current.lstrip()) <= indent:
                break
            if current.strip() == "deps:":
                k = j + 1
                while k < len(lines) and lines[k].lstrip().startswith("- "):
                    k += 1
                item = " " * (len(current) - len(current.lstrip()) + 2) + "- "
                lines[j + 1 : k] = [f"{item}{dep}\n" for dep in deps]
                return "".join(lines)
        break
    raise ValueError(f"{stage}: no `deps:` list found in dvc.yaml")


#: The sources and dvc.yaml as of the last check that found nothing stale (not tracked by DVC).
STAMP = Path(".dvc/tmp/tabml-stage-deps.json")


def _stamp_key(project: Path) -> str:
    """dvc.yaml's bytes and every package source's name, size and mtime: reading the imports of
    every module again costs about 0.1 s of each no-op run, a stat of each file next to nothing."""
    digest = hashlib.md5((project / DVC_YAML).read_bytes())
    for path in sorted((project / SOURCE_ROOT / PACKAGE).rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(project)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def update_dvc_yaml(project: Path = Path(".")) -> list[str]:
    """Rewrite the code deps that drifted (atomically, comments kept); return those stages.
    Nothing is parsed when neither the sources nor dvc.yaml changed since the last clean check."""
    dvc_yaml, stamp = project / DVC_YAML, project / STAMP
    if stamp.is_file() and stamp.read_text() == _stamp_key(project):
        return []
    stale = stale_stages(project)
    if stale:
        text = dvc_yaml.read_text()
        for name, deps in stale.items():
            text = _replace_deps(text, name, deps)
        write_text_atomic(dvc_yaml, text)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stamp, _stamp_key(project))
    return sorted(stale)


def describe(dvc_yaml: Path, name: str, wanted: list[str]) -> str:
    have = [str(d) for d in _stages(dvc_yaml)[name].get("deps", [])]
    missing = [d for d in wanted if d not in have]
    extra = [d for d in have if d not in wanted]
    parts = [f"missing {missing}"] if missing else []
    parts += [f"not imported {extra}"] if extra else []
    return f"stage {name}: " + "; ".join(parts or ["order differs"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tabml.stage_deps", description=__doc__)
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="exit 1 if any stage's deps drifted")
    action.add_argument("--write", action="store_true", help="rewrite the drifted deps")
    parser.add_argument(
        "--project", type=Path, default=Path("."), help="directory holding dvc.yaml and src/"
    )
    args = parser.parse_args(argv)
    if args.write:
        changed = update_dvc_yaml(args.project)
        print(f"updated code deps of: {', '.join(changed)}" if changed else "code deps up to date")
        return 0
    stale = stale_stages(args.project)
    for name, wanted in stale.items():
        print(describe(args.project / DVC_YAML, name, wanted), file=sys.stderr)
    if stale:
        print("fix: python -m tabml.stage_deps --write", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
