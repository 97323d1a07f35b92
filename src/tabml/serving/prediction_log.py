"""The prediction log on disk: events as JSON lines in rotating segment files.

Format and names are `tabml.monitoring.events`' (what the batch report reads). One writer per
process (each worker's monitor process) appends to `<name>.jsonl.open` and renames it to
`<name>.jsonl` when the segment is `max_bytes` large, `max_seconds` old, or the service stops, so
a reader only ever takes whole segments.

Nothing here raises into the service: a full disk or an unwritable directory makes `write`
return False (the caller counts the events as dropped) and logs one error line until writing
works again. A failed write is cut back to the last whole line, so no segment ever holds half
an event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic_core import to_json

from tabml.monitoring.events import (
    FEEDBACK,
    OPEN_SUFFIX,
    PREDICTION,
    SEGMENT_SUFFIX,
    parse_segment_name,
    safe_host,
    segment_name,
)

log = logging.getLogger("tabml.serving.prediction_log")


#: Records of an answered request as the log needs them: (ts, request id, index of the first
#: record in the request, records, probabilities, latency in ms).
Answered = tuple[float, str, int, Sequence[Mapping[str, Any]], np.ndarray, float]


class PredictionLines:
    """`prediction` event lines of one model version, cheaply.

    Per request, what its events share (type, time, request id, model, latency) is encoded once
    as a prefix and its probabilities in one pydantic-core call; per record, only the record is
    encoded and the rest filled into a short byte template. Half the cost of one template for
    every field, a third of building and serialising one dict per event: it is paid for every
    scored record. (Key order differs from the format's description; JSON objects have none.)
    """

    _PREFIX = (
        b'{"type":"%s","ts":%s,"request_id":%s,"model_name":%s,"model_version":%s,"latency_ms":%s,'
    )
    _RECORD = b'%s"index":%d,"record":%s,"probability":%s,"label":%s}\n'
    #: a challenger's shadow score of a champion-answered request: `"shadow": true` added
    _SHADOW_RECORD = _RECORD.removesuffix(b"}\n") + b',"shadow":true}\n'

    def __init__(
        self,
        model_name: str,
        model_version: str,
        threshold: float,
        negative: str,
        positive: str,
        *,
        shadow: bool = False,
    ) -> None:
        self._template = self._SHADOW_RECORD if shadow else self._RECORD
        self._constants = (PREDICTION.encode(), to_json(model_name), to_json(model_version))
        self._threshold = threshold
        self._labels = (to_json(negative), to_json(positive))

    def lines(self, requests: Sequence[Answered]) -> bytes:
        """The events of many requests, one per record (index: its position in its request),
        labelled at the version's threshold as the responses were.

        The numbers of all the requests (times, latencies, probabilities) are encoded in one
        pydantic-core call each: finite floats as JSON, split on the commas between them (a
        number has none). For single-record requests that is 30 % less than per request."""
        if not requests:
            return b""
        template, (kind, name, version) = self._template, self._constants
        threshold, (negative, positive) = self._threshold, self._labels
        stamps = _numbers([request[0] for request in requests])
        latencies = _numbers([round(request[5], 3) for request in requests])
        scores = np.concatenate([request[4] for request in requests]).tolist()
        encoded = _numbers(scores)
        out = []
        end = 0
        for (_, request_id, first, records, _, _), ts, latency_ms in zip(
            requests, stamps, latencies, strict=True
        ):
            prefix = self._PREFIX % (kind, ts, to_json(request_id), name, version, latency_ms)
            start, end = end, end + len(records)
            rows = zip(records, scores[start:end], encoded[start:end], strict=True)
            for index, (record, p, text) in enumerate(rows, start=first):
                label = positive if p >= threshold else negative
                out.append(template % (prefix, index, to_json(record), text, label))
        return b"".join(out)


def _numbers(values: list[float]) -> list[bytes]:
    """Each of `values` (finite floats) as JSON, by one pydantic-core call."""
    return to_json(values)[1:-1].split(b",")


def feedback_line(ts: float, request_id: str, index: int, label: str) -> bytes:
    event = {"type": FEEDBACK, "ts": ts, "request_id": request_id, "index": index, "label": label}
    return to_json(event) + b"\n"


def _closed(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(OPEN_SUFFIX) + SEGMENT_SUFFIX)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def recover_orphans(directory: Path, host: str) -> list[Path]:
    """Close the open segments a killed process of this host left behind (a restarted container
    keeps its host name): cut each after its last whole line and rename it to `.jsonl`."""
    recovered = []
    for path in sorted(Path(directory).glob(f"*{OPEN_SUFFIX}")):
        owner = parse_segment_name(path.name.removesuffix(OPEN_SUFFIX))
        if owner is None or owner[0] != safe_host(host) or process_alive(owner[1]):
            continue
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            if whole:
                os.truncate(path, len(whole))
                path.rename(_closed(path))
                recovered.append(path)
            else:
                path.unlink()
    return recovered


class SegmentWriter:
    """Appends lines to the current segment of `directory`; rotates by size and age."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_seconds: float,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self._sequence = 0
        self._file: Any = None  # io.FileIO of the open segment
        self._path: Path | None = None
        self._opened = 0.0
        self._size = 0
        self._failing: str | None = None
        with contextlib.suppress(OSError):  # an unwritable directory shows at the first write
            self.directory.mkdir(parents=True, exist_ok=True)
            for path in recover_orphans(self.directory, self._host):
                log.warning("closed prediction log segment %s left open by a killed process", path)

    def write(self, data: bytes) -> bool:
        """Append whole lines, in as many segments as `max_bytes` needs (a line longer than
        that gets a segment of its own); False if the disk refused any of them. The pieces
        written before a refusal stay: their events are then counted as dropped although they
        are kept, a miscount towards drops that never hides a lost event."""
        written = True
        for piece in self._pieces(data):
            written = self._write_piece(piece) and written
        return written

    def _pieces(self, data: bytes) -> list[bytes]:
        """`data` cut at line ends so that each piece fits the room left in its segment."""
        pieces, start = [], 0
        room = self.max_bytes - self._size if self._file is not None else self.max_bytes
        while len(data) - start > room:
            cut = data.rfind(b"\n", start, start + room) + 1  # after the last line that fits
            if cut <= start:
                if room < self.max_bytes:  # none fits the segment's rest: the next one, then
                    room = self.max_bytes
                    continue
                cut = data.find(b"\n", start + room) + 1 or len(data)  # a line this long: alone
            pieces.append(data[start:cut])
            start, room = cut, self.max_bytes
        if start < len(data):
            pieces.append(data[start:])
        return pieces

    def _write_piece(self, data: bytes) -> bool:
        try:
            if self._file is not None and self._size and self._size + len(data) > self.max_bytes:
                self._close()
            if self._file is None:
                self._open()
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written:]
        except OSError as exc:
            self._failed(exc)
            return False
        self._size += len(data)
        if self._failing is not None:
            log.info("prediction log: writing to %s works again", self.directory)
            self._failing = None
        return True

    def rotate_if_due(self) -> None:
        """Close the segment once it is `max_seconds` old (called by the writer's ticks)."""
        if self._file is not None and time.time() - self._opened >= self.max_seconds:
            try:
                self._close()
            except OSError as exc:
                self._failed(exc)

    def close(self) -> None:
        """Close the segment (at shutdown): renamed to `.jsonl`, readable by the batch tools."""
        try:
            self._close()
        except OSError as exc:
            self._failed(exc)

    def _open(self) -> None:
        self._opened = time.time()
        self._sequence += 1
        name = segment_name(self._opened, self._host, self._pid, self._sequence)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}{OPEN_SUFFIX}"
        self._file = open(path, "xb", buffering=0)  # noqa: SIM115 - closed by _close
        self._path = path
        self._size = 0

    def _close(self) -> None:
        file, path, size = self._file, self._path, self._size
        if file is None or path is None:
            return
        self._file, self._path, self._size = None, None, 0
        file.close()
        if size:
            path.rename(_closed(path))
        else:
            path.unlink()

    def _failed(self, exc: OSError) -> None:
        """Keep the segment's whole lines (closed, so they are not lost), drop the rest; one
        error line per outage, not one per event."""
        file, path, size = self._file, self._path, self._size
        self._file, self._path, self._size = None, None, 0
        if file is not None and path is not None:
            with contextlib.suppress(OSError):
                file.truncate(size)
            with contextlib.suppress(OSError):
                file.close()
            with contextlib.suppress(OSError):
                if size:
                    path.rename(_closed(path))
                else:
                    path.unlink()
        if self._failing is None:
            self._failing = str(exc)
            log.error(
                "prediction log: cannot write to %s (%s); dropping events, counted in "
                "tabml_prediction_log_dropped_total, until writing works again",
                self.directory,
                exc,
            )
