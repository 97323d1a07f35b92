"""Realized metrics: how the served predictions fared once their labels came back.

Plain functions over (score, label) pairs, and a thread-safe window of the last N labelled
predictions built on them, so the service's gauges, the batch report and the loop's trigger
compute accuracy and ROC AUC with the same code as each other.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np


def _pairs(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be equal-length vectors")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return s, y.astype(bool)


def accuracy(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> float | None:
    """Share of predictions (positive when score >= threshold, as served) matching the label."""
    s, y = _pairs(scores, labels)
    if s.size == 0:
        return None
    return float(np.mean((s >= threshold) == y))


def roc_auc(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> float | None:
    """ROC AUC as the Mann-Whitney statistic; None unless both classes are present.

    It is the probability that a random positive outscores a random negative, ties counting
    one half, computed from mid-ranks (tied scores share the mean of the ranks they span).
    """
    s, y = _pairs(scores, labels)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    mid_ranks = np.cumsum(counts) - (counts - 1) / 2
    rank_sum = mid_ranks[inverse][y].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


class RealizedWindow:
    """The last `size` labelled predictions (score, 0/1 label); thread-safe."""

    def __init__(self, size: int, threshold: float) -> None:
        if size < 1:
            raise ValueError("window size must be at least 1")
        self.size = size
        self.threshold = threshold
        self._scores = np.zeros(size, dtype=np.float64)
        self._labels = np.zeros(size, dtype=np.int8)
        self._next = 0
        self._held = 0
        self._lock = threading.Lock()

    def add(self, scores: Sequence[float], labels: Sequence[int]) -> None:
        s, y = _pairs(scores, labels)
        s, y = s[-self.size :], y[-self.size :]
        with self._lock:
            slots = (self._next + np.arange(s.size)) % self.size
            self._scores[slots] = s
            self._labels[slots] = y
            self._next = (self._next + s.size) % self.size
            self._held = min(self.size, self._held + s.size)

    @property
    def count(self) -> int:
        """How many labelled predictions the window holds (at most `size`)."""
        return self._held

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the held scores and labels, in no particular order: windows combine by
        concatenating them (the service's workers do), and the metrics do not depend on order."""
        # Slots fill in order from 0, so the first `held` are the ones in use.
        with self._lock:
            return self._scores[: self._held].copy(), self._labels[: self._held].copy()

    def accuracy(self) -> float | None:
        return accuracy(*self.pairs(), self.threshold)

    def roc_auc(self) -> float | None:
        return roc_auc(*self.pairs())
