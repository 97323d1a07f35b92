"""Coalesce the records of concurrent small requests into one scoring call.

Requests that arrive in the same event-loop iteration (several keep-alive clients sending at
once) are scored together: one feature-transform and one LightGBM call instead of one per
request, which is most of the per-request CPU of a single-record prediction. Nothing waits for
a batch to fill: the flush runs as soon as the requests already received have been parsed, so a
lone request is scored immediately. Rows are scored independently, so a record's probability
does not depend on which other records share its call (the parity test checks it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: Requests with more rows than this are scored on their own (their call is amortised already).
MAX_COALESCED_ROWS = 64


class MicroBatcher:
    def __init__(self, score: Callable[[list[Any]], np.ndarray]) -> None:
        self._score = score
        self._pending: list[tuple[Sequence[Any], asyncio.Future[np.ndarray]]] = []
        self._rows = 0

    async def score(self, records: Sequence[Any]) -> np.ndarray:
        """Probabilities of `records`, scored together with other requests' pending records."""
        if len(records) > MAX_COALESCED_ROWS:
            return self._score(list(records))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((records, future))
        self._rows += len(records)
        if self._rows >= MAX_COALESCED_ROWS:
            self._flush()
        return await future

    def _flush(self) -> None:
        pending, self._pending, self._rows = self._pending, [], 0
        if not pending:  # already flushed because the batch was full
            return
        records = [record for request, _ in pending for record in request]
        try:
            probabilities = self._score(records)
        except Exception as exc:  # every waiting request gets the error, none hangs
            for _, future in pending:
                if not future.done():
                    future.set_exception(exc)
            return
        start = 0
        for request, future in pending:
            end = start + len(request)
            if not future.done():  # the client may have gone away
                future.set_result(probabilities[start:end])
            start = end
