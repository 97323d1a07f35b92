"""Read a user's CSV for `tabml init-dataset`: encoding, separator, header, field counts.

The separator is sniffed with the standard library's `csv.Sniffer` and the values are parsed by
pandas' CSV reader. Two checks are written by hand, because the pipeline's raw-file check
(`tabml.data.check_raw_lines`) reads files the same way: a line must split on the separator into
exactly as many fields as the header (a quoted separator or a line break inside quotes is refused
here, as it would be there), and a byte that is not UTF-8 is reported by line and column instead
of pandas' traceback with a byte offset.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tabml.errors import TabmlError

if TYPE_CHECKING:
    import pandas as pd

#: Separators `csv.Sniffer` may choose; anything else needs `--separator`.
SEPARATORS = ",;\t|"
SNIFF_BYTES = 64 * 1024


class CsvFormatError(TabmlError, ValueError):
    """The CSV cannot be read as a table: the message names the file, line and column."""


@dataclass(frozen=True)
class CsvTable:
    """A CSV's values as strings (nothing is typed or treated as missing yet)."""

    path: Path
    separator: str
    frame: pd.DataFrame
    #: Where each row of `frame` is, for messages: its 1-based file line ("7"; blank lines are
    #: skipped), or "file:line" in a table read from several files.
    lines: list[str]

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.frame.columns]


def _decode(path: Path, payload: bytes, separator: str) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = payload.rfind(b"\n", 0, exc.start) + 1
        line_no = payload.count(b"\n", 0, exc.start) + 1
        header = payload.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
        names = header.split(separator)
        field = payload.count(separator.encode(), line_start, exc.start)
        where = f", column {names[field]!r}" if line_no > 1 and field < len(names) else ""
        raise CsvFormatError(
            f"{path} line {line_no}{where}: not UTF-8 (byte {payload[exc.start]:#04x} at "
            f"position {exc.start - line_start + 1}); save the file as UTF-8"
        ) from None


def _sniff_separator(path: Path, text: str) -> str:
    first_line = text.split("\n", 1)[0]
    try:
        separator = csv.Sniffer().sniff(text[:SNIFF_BYTES], delimiters=SEPARATORS).delimiter
    except csv.Error:
        separator = next((s for s in SEPARATORS if s in first_line), "")
    if not separator or separator not in first_line:
        raise CsvFormatError(
            f"{path} line 1: cannot tell the separator (none of {list(SEPARATORS)} separates "
            f"the header {first_line[:120]!r}); a dataset needs a header and at least one "
            "feature besides the label, or pass --separator"
        )
    return separator


def _check_field_counts(path: Path, text: str, separator: str) -> tuple[list[str], list[str]]:
    """The header's names and the line numbers of the data rows; refuse a line whose field
    count differs from the header's."""
    lines = text.split("\n")
    header = lines[0].rstrip("\r")
    names = next(csv.reader([header], delimiter=separator))
    expected = len(names)
    data_lines = []
    for line_no, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        found = line.count(separator) + 1
        if found != expected:
            hint = "a separator inside quotes?" if '"' in line else "truncated or extra field?"
            raise CsvFormatError(
                f"{path} line {line_no}: {found} fields separated by {separator!r}, the header "
                f"has {expected} ({hint}): {line[:120]!r}"
            )
        data_lines.append(str(line_no))
    return names, data_lines


def read_csv_table(path: Path, separator: str | None = None) -> CsvTable:
    """Read `path` as a headed table of strings, or raise CsvFormatError saying what is wrong."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise CsvFormatError(f"{path}: no such file")
    payload = path.read_bytes()
    if not payload.strip():
        raise CsvFormatError(f"{path}: empty file; a dataset needs a header and data rows")
    # The separator is sniffed on a lossy decoding, so that a bad byte can be placed in a column.
    lossy = payload.decode("utf-8", errors="replace").removeprefix("\ufeff")
    separator = separator or _sniff_separator(path, lossy)
    text = _decode(path, payload, separator).removeprefix("\ufeff")
    names, data_lines = _check_field_counts(path, text, separator)
    if not data_lines:
        raise CsvFormatError(f"{path}: only a header row (line 1), no data rows")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise CsvFormatError(f"{path} line 1: duplicated column name(s) {duplicated}")
    frame = pd.read_csv(
        io.StringIO(text),
        sep=separator,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        skip_blank_lines=True,
        # pandas' C reader takes one-character separators only (a multi-character one, given
        # with --separator, needs the Python reader, about 5x slower).
        engine="c" if len(separator) == 1 else "python",
    )
    return CsvTable(path=path, separator=separator, frame=frame, lines=data_lines)
