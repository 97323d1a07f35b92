"""Population stability index and the live drift window the service feeds on every prediction.

The window keeps bin indices, not records: a ring buffer of the last `size` records' bins plus
running counts per bin, so adding a record costs one lookup per feature and reading the PSI never
touches the records again. No pandas, so it runs on the service's hot path.
"""

from __future__ import annotations

import contextlib
import math
import operator
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tabml.monitoring.profile import ReferenceProfile

if TYPE_CHECKING:
    from tabml.config import MonitorConfig

Verdict = Literal["stable", "moderate", "significant"]


def population_stability_index(
    expected_fractions: Sequence[float] | np.ndarray,
    actual_counts: Sequence[float] | np.ndarray,
    epsilon: float,
) -> float:
    """PSI = sum over bins of (a - e) * ln(a / e), a and e the actual and expected fractions.

    Both fractions are floored at `epsilon` first: a bin empty on one side would otherwise make
    the logarithm infinite. With the floor, such a bin adds a large but finite term (e = 0.1,
    a = 0, epsilon = 1e-4: 0.69, already "significant"), and a bin empty on both sides adds 0.
    NaN when there are no actual counts: an empty window has no distribution to compare.
    """
    expected = np.asarray(expected_fractions, dtype=np.float64)
    counts = np.asarray(actual_counts, dtype=np.float64)
    if expected.shape != counts.shape:
        raise ValueError(f"{expected.size} expected fractions but {counts.size} actual counts")
    total = counts.sum()
    if total == 0:
        return math.nan
    e = np.maximum(expected, epsilon)
    a = np.maximum(counts / total, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def verdict(psi: float, config: MonitorConfig) -> Verdict:
    """The PSI band: below `psi_warn` stable, below `psi_alert` moderate, else significant."""
    if math.isnan(psi):
        raise ValueError("PSI is NaN (empty window): no verdict")
    if psi >= config.psi_alert:
        return "significant"
    return "moderate" if psi >= config.psi_warn else "stable"


class FeatureBinner:
    """One raw request record → one bin index per profiled feature, using the profile's bins."""

    def __init__(self, profile: ReferenceProfile) -> None:
        self.features = tuple(profile.features)
        self._bins = tuple(h.bins for h in profile.features.values())
        self._score = profile.score.bins
        self._getter = operator.itemgetter(*self.features)

    def bin_record(self, record: Mapping[str, Any]) -> list[int]:
        """Bin indices in profile order; absent nullable columns count as missing."""
        return [
            bins.index(record.get(name))
            for name, bins in zip(self.features, self._bins, strict=True)
        ]

    def bin_score(self, score: float) -> int:
        return self._score.index(score)

    def bin_records(
        self, records: Sequence[Mapping[str, Any]], scores: Sequence[float] | np.ndarray
    ) -> np.ndarray:
        """Bin indices of many records, one row each: the features in profile order, then the
        score. Column by column with each bin's vectorised `indices` (same bins as
        `bin_record`), a fifth of the per-record cost."""
        columns = [
            bins.indices(values)
            for values, bins in zip(self._columns(records), self._bins, strict=True)
        ]
        columns.append(self._score.indices(scores))
        return np.column_stack(columns)

    def _columns(self, records: Sequence[Mapping[str, Any]]) -> list[Sequence[Any]]:
        """The profiled features' values, column by column: by one C-level `itemgetter` per
        record while every record has every feature, else value by value (absent is missing)."""
        if len(self.features) > 1:
            with contextlib.suppress(KeyError):
                return list(zip(*map(self._getter, records), strict=True)) or [
                    () for _ in self.features
                ]
        return [[record.get(name) for record in records] for name in self.features]


class DriftWindow:
    """The last `size` records' bins with running counts; thread-safe for a worker thread.

    Feature f's bins occupy a contiguous range of one flat count array and the score's come
    last, so a record is one row of global bin indices: adding it increments those counts and
    decrements the ones of the row it overwrites.
    """

    def __init__(self, profile: ReferenceProfile, size: int, epsilon: float) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self.epsilon = epsilon
        self._binner = FeatureBinner(profile)
        histograms = [*profile.features.values(), profile.score]
        self._expected = [np.asarray(h.fractions) for h in histograms]
        sizes = [h.bins.size for h in histograms]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.intp)
        total = int(self._offsets[-1])
        self._rows = np.zeros((size, len(histograms)), dtype=np.min_scalar_type(total - 1))
        self._counts = np.zeros(total, dtype=np.int64)
        self._next = 0
        self._held = 0
        self._lock = threading.Lock()

    def add(
        self, records: Sequence[Mapping[str, Any]], scores: Sequence[float] | np.ndarray
    ) -> None:
        """Bin the records and their scores (outside the lock), then slide the window."""
        if len(records) != len(scores):
            raise ValueError(f"{len(records)} records but {len(scores)} scores")
        if not records:
            return
        # Only the last `size` records can stay in the window.
        local = self._binner.bin_records(records[-self.size :], scores[-self.size :])
        rows = local + self._offsets[:-1]
        bins = self._counts.size
        added = np.bincount(rows.ravel(), minlength=bins)  # faster than np.add.at
        with self._lock:
            slots = (self._next + np.arange(len(rows))) % self.size
            # Slots fill in order from 0, so a slot below the held count holds a record.
            evicted = self._rows[slots[slots < self._held]].ravel()
            self._counts += added - np.bincount(evicted, minlength=bins)
            self._rows[slots] = rows
            self._next = (self._next + len(rows)) % self.size
            self._held = min(self.size, self._held + len(rows))

    @property
    def records(self) -> int:
        """How many records the window holds (at most `size`)."""
        return self._held

    def counts(self) -> np.ndarray:
        """A copy of the count per bin (every feature's bins in profile order, then the score's).

        Windows over the same profile combine by adding their counts: the service sums its
        workers' windows this way and passes the sum to `feature_psi` / `prediction_psi`.
        """
        with self._lock:
            return self._counts.copy()

    def _psi(self, counts: np.ndarray, i: int) -> float:
        start, stop = self._offsets[i], self._offsets[i + 1]
        return population_stability_index(self._expected[i], counts[start:stop], self.epsilon)

    def feature_psi(self, counts: np.ndarray | None = None) -> dict[str, float]:
        """PSI of every profiled feature against the reference (NaN while the window is empty),
        of this window or of `counts` laid out as `counts()` returns them."""
        counts = self.counts() if counts is None else counts
        return {name: self._psi(counts, i) for i, name in enumerate(self._binner.features)}

    def prediction_psi(self, counts: np.ndarray | None = None) -> float:
        """PSI of the predicted scores against the validation split's (as `feature_psi`)."""
        counts = self.counts() if counts is None else counts
        return self._psi(counts, len(self._expected) - 1)

    def memory_bytes(self) -> int:
        return self._rows.nbytes + self._counts.nbytes
