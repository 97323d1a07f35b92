"""Confidence intervals for realized metrics, in numpy and the standard library.

- Accuracy: the Wilson score interval. The Wald interval p ± z·√(p(1-p)/n) undercovers at the
  sample sizes a canary collects and collapses to a point at 0 % or 100 % (Brown, Cai and
  DasGupta, Statistical Science 2001); Wilson's keeps its nominal coverage there.
- A difference of two accuracies (independent samples): Newcombe's hybrid score interval
  (Statistics in Medicine 1998, method 10), built from the two Wilson intervals, so it is
  consistent with them and well behaved near 0 and 1.
- ROC AUC: DeLong's variance (Biometrics 1988), from mid-ranks in O(n log n) (Sun and Xu, IEEE
  SPL 2014), with a normal interval clipped to [0, 1], as pROC computes it. Exact and
  deterministic, unlike a bootstrap, and cheap enough for a million labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from tabml.monitoring.realized import roc_auc


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def z_two_sided(level: float) -> float:
    """The normal quantile of a two-sided interval at `level` (1.96 for 0.95)."""
    return NormalDist().inv_cdf((1 + level) / 2)


def z_one_sided(confidence: float) -> float:
    """The normal quantile of a one-sided bound at `confidence` (1.645 for 0.95)."""
    return NormalDist().inv_cdf(confidence)


def wilson(successes: int, n: int, z: float) -> Estimate | None:
    """Share `successes / n` with its Wilson score interval; None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def newcombe_difference(
    successes_a: int, n_a: int, successes_b: int, n_b: int, z: float
) -> Estimate | None:
    """p_a - p_b with Newcombe's hybrid score interval; None when either sample is empty."""
    a, b = wilson(successes_a, n_a, z), wilson(successes_b, n_b, z)
    if a is None or b is None:
        return None
    difference = a.value - b.value
    return Estimate(
        difference,
        difference - math.hypot(a.value - a.low, b.high - b.value),
        difference + math.hypot(a.high - a.value, b.value - b.low),
    )


def _mid_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def delong_auc(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, z: float
) -> Estimate | None:
    """ROC AUC with DeLong's interval; None unless there are at least two of each class."""
    auc = roc_auc(scores, labels)  # validates the pairs; None without both classes
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives, negatives = s[y], s[~y]
    m, n = positives.size, negatives.size
    if auc is None or m < 2 or n < 2:
        return None
    overall = _mid_ranks(np.concatenate([positives, negatives]))
    # Per positive: the share of negatives it outscores (ties count one half); per negative:
    # the share of positives that outscore it. Their means are the AUC.
    v10 = (overall[:m] - _mid_ranks(positives)) / n
    v01 = 1 - (overall[m:] - _mid_ranks(negatives)) / m
    se = math.sqrt(float(np.var(v10, ddof=1)) / m + float(np.var(v01, ddof=1)) / n)
    return Estimate(auc, max(0.0, auc - z * se), min(1.0, auc + z * se))
