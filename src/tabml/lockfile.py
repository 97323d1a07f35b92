"""Reading `dvc.lock`: the one place that knows its layout.

`stages.<stage>.outs[].{path, md5}` are the pipeline's outputs; `deps[].{path, md5}` its
inputs. Read as plain YAML so the service and the tracking fast path need no DVC import.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from tabml.layout import LOCK_FILE

#: The stage that reads the raw data (its directory dependency is the data version).
VALIDATE_STAGE = "validate"


class LockFileError(ValueError):
    """`dvc.lock` is missing or not in the layout DVC writes."""


@dataclass(frozen=True)
class Lock:
    path: Path
    #: stage → {output path → md5}
    stage_outputs: dict[str, dict[str, str]]
    #: stage → {dependency path → md5}
    stage_deps: dict[str, dict[str, str]]

    @property
    def outputs(self) -> dict[str, str]:
        """Every output of every stage, path → md5."""
        return {p: md5 for outs in self.stage_outputs.values() for p, md5 in outs.items()}

    @property
    def inputs(self) -> dict[str, str]:
        """Dependencies no stage produces and that are not code or configuration: the data."""
        outputs = self.outputs
        return {
            p: md5
            for deps in self.stage_deps.values()
            for p, md5 in deps.items()
            if p not in outputs and not p.startswith(("src/", "conf/"))
        }

    def data_md5(self) -> str | None:
        """The md5 of the raw data directory the pipeline ran on (the validate stage's
        directory input: `data` for Adult, `datasets/<name>` otherwise), without `.dir`."""
        inputs = self.inputs
        for path, md5 in self.stage_deps.get(VALIDATE_STAGE, {}).items():
            if path in inputs and md5.endswith(".dir"):
                return md5.removesuffix(".dir")
        return None

    def output_md5(self, path: str, stage: str | None = None) -> str | None:
        """The md5 recorded for one output (of `stage`, or of any stage); None if absent."""
        if stage is not None:
            return self.stage_outputs.get(stage, {}).get(path)
        return self.outputs.get(path)


def parse_lock(text: str, path: Path = LOCK_FILE) -> Lock:
    try:
        stages = yaml.safe_load(text)["stages"]
        outs = {
            name: {str(o["path"]): str(o["md5"]) for o in stage.get("outs", []) if "md5" in o}
            for name, stage in stages.items()
        }
        deps = {
            name: {str(d["path"]): str(d["md5"]) for d in stage.get("deps", []) if "md5" in d}
            for name, stage in stages.items()
        }
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise LockFileError(f"cannot read {path}: {exc}") from None
    return Lock(Path(path), outs, deps)


def read_lock(path: Path = LOCK_FILE) -> Lock:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise LockFileError(f"cannot read {path}: {exc}") from None
    return parse_lock(text, path)


def locked_md5(path: str, stage: str | None = None, lock_file: Path = LOCK_FILE) -> str | None:
    """The md5 `dvc.lock` records for an output; None when there is no lock or no such entry."""
    if not Path(lock_file).exists():
        return None
    return read_lock(lock_file).output_md5(path, stage)
