"""Check that model artifacts are exactly the files `dvc.lock` locks; used by `docker build`.

    python docker/verify_artifacts.py [--root DIR] [--lock dvc.lock] [--model-md5 MD5]
                                      [--copy-to DEST] FILE...

Every FILE (a path relative to --root, as `dvc.lock` writes it) must exist and have the md5 that
`dvc.lock` records for it as a stage output (`stages.<stage>.outs[].path/md5`). With --copy-to,
the verified files and the lock file are then copied under DEST with the same relative paths, so
the image receives only what was checked. --model-md5 also checks the md5 given as a build
argument (and written into the image's labels) against the lock, so the labels cannot lie.

Exit status 0 when everything matches; 1 with one line per problem (the file, its md5 and the
one `dvc.lock` records, or that it is missing) and how to fix it; 2 for usage errors.
Needs PyYAML (a serving dependency, so it is in the image's virtual environment). It is
deliberately standalone (its own md5 and lock reading, no `tabml` import): it checks the build
context before anything of the project is trusted, and runs with any Python that has PyYAML.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import yaml

MODEL_FILE = "models/model.txt"

FIX_MISSING = (
    "Produce the artifacts with `python src/train.py` (runs the DVC pipeline), or fetch the "
    "locked ones from the DVC remote with `dvc pull`, then build again."
)
FIX_MISMATCH = (
    "The image must carry the exact files dvc.lock locks. Restore them with `dvc checkout` "
    "(or `dvc pull`), or, if the new files are intended, run `python src/train.py` so dvc.lock "
    "records them (and commit it), then build again."
)


class VerificationError(Exception):
    """The artifacts are not the ones the lock file records."""


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locked_outputs(lock: Path) -> dict[str, str]:
    """Output path → md5 for every stage in `dvc.lock`."""
    try:
        document = yaml.safe_load(lock.read_text())
        outputs = {}
        for stage in document["stages"].values():
            for out in stage.get("outs", []):
                outputs[str(out["path"])] = str(out["md5"])
    except FileNotFoundError:
        raise VerificationError(
            f"{lock} is missing: it records the artifacts' md5. {FIX_MISSING}"
        ) from None
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(f"cannot read {lock}: {exc}") from None
    return outputs


def verify(
    root: Path, lock: Path, files: list[str], model_md5: str | None = None
) -> dict[str, str]:
    """md5 of each file, all equal to the lock's; raises VerificationError naming every problem."""
    outputs = locked_outputs(lock)
    problems: list[str] = []
    fixes: list[str] = []
    found: dict[str, str] = {}
    for name in files:
        expected = outputs.get(name)
        path = root / name
        if expected is None:
            problems.append(f"{name}: not an output recorded in {lock.name}")
            fixes.append(
                f"Only DVC-locked artifacts go into the image: add {name} to a stage's outs in "
                "dvc.yaml, or stop copying it."
            )
        elif not path.is_file():
            problems.append(f"{name}: missing (dvc.lock records md5 {expected})")
            fixes.append(FIX_MISSING)
        else:
            actual = file_md5(path)
            found[name] = actual
            if actual != expected:
                problems.append(f"{name}: md5 {actual} but dvc.lock records md5 {expected}")
                fixes.append(FIX_MISMATCH)
    if model_md5 and outputs.get(MODEL_FILE) not in (None, model_md5):
        problems.append(
            f"build argument MODEL_MD5={model_md5} but dvc.lock records md5 "
            f"{outputs[MODEL_FILE]} for {MODEL_FILE}"
        )
        fixes.append(
            "Build with docker/build-image.sh, which reads the build arguments from dvc.lock."
        )
    if problems:
        unique_fixes = list(dict.fromkeys(fixes))
        raise VerificationError(
            f"model artifacts do not match {lock.name}:\n"
            + "".join(f"  {p}\n" for p in problems)
            + "\n".join(unique_fixes)
        )
    return found


def copy_verified(root: Path, lock: Path, files: list[str], dest: Path) -> None:
    for name in [*files, lock.relative_to(root).as_posix()]:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / name, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="artifact, relative to --root")
    parser.add_argument("--root", type=Path, default=Path("."), help="project root (default .)")
    parser.add_argument("--lock", default="dvc.lock", help="lock file, relative to --root")
    parser.add_argument("--model-md5", default="", help=f"expected md5 of {MODEL_FILE}")
    parser.add_argument("--copy-to", type=Path, help="copy verified files and the lock here")
    args = parser.parse_args(argv)

    lock = args.root / args.lock
    try:
        found = verify(args.root, lock, args.files, args.model_md5 or None)
    except VerificationError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    for name, md5 in found.items():
        print(f"verified {name}  md5 {md5} = dvc.lock")
    if args.copy_to:
        copy_verified(args.root, lock, args.files, args.copy_to)
    return 0


if __name__ == "__main__":
    sys.exit(main())
