"""Binning one column: the single definition of "which bin is this value in".

The reference profile counts its rows with `indices` and the live window bins each request with
`index`; both follow the same rule (and a test checks they agree), so a reference fraction and a
live count always describe the same set of values.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from typing import Any

import numpy as np


def is_missing(value: Any) -> bool:
    """None or a float NaN: how missing values arrive from JSON, numpy and pandas alike."""
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class NumericBins:
    """Right-closed bins between edges (bin i holds edges[i-1] < v <= edges[i]), then missing.

    Right-closed because edges are observed quantiles: a point mass at an edge (capital_gain is
    ~92 % zeros, hours_per_week ~47 % forty) fills the bin that ends at it, and the values just
    above it keep a bin of their own instead of being swallowed by the mass.
    """

    edges: tuple[float, ...]

    @property
    def size(self) -> int:
        return len(self.edges) + 2

    @property
    def missing(self) -> int:
        return len(self.edges) + 1

    def index(self, value: Any) -> int:
        if is_missing(value):
            return self.missing
        return bisect_left(self.edges, value)

    def indices(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        array = np.asarray(values, dtype=np.float64)  # None becomes NaN
        out = np.searchsorted(np.asarray(self.edges, dtype=np.float64), array, side="left")
        out[np.isnan(array)] = self.missing
        return out

    @classmethod
    def fit(cls, values: Sequence[Any] | np.ndarray, bins: int) -> NumericBins:
        """Up to `bins` quantile bins of the present values; repeated quantiles collapse."""
        array = np.asarray(values, dtype=np.float64)
        present = array[~np.isnan(array)]
        if present.size == 0:
            return cls(())
        # inverted_cdf returns observed values, so every edge is a value a request can carry.
        quantiles = np.quantile(present, np.arange(1, bins) / bins, method="inverted_cdf")
        return cls(tuple(float(edge) for edge in np.unique(quantiles)))


@dataclass(frozen=True)
class CategoryBins:
    """One bucket per frequent level, then "other" (rare or unknown values), then missing."""

    levels: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.levels) + 2

    @property
    def other(self) -> int:
        return len(self.levels)

    @property
    def missing(self) -> int:
        return len(self.levels) + 1

    @cached_property
    def _lookup(self) -> dict[str, int]:
        return {level: i for i, level in enumerate(self.levels)}

    @cached_property
    def _common(self) -> dict[Any, int]:
        """Levels and None: the values requests carry, answered by one dict lookup."""
        return {**self._lookup, None: self.missing}

    def index(self, value: Any) -> int:
        if is_missing(value):
            return self.missing
        return self._lookup.get(value, self.other)

    def indices(self, values: Sequence[Any] | np.ndarray) -> np.ndarray:
        # Levels and None by one C-level dict lookup per value (the live window bins every
        # served record); the rest (other strings, NaN) through `index`.
        found = np.fromiter(
            map(self._common.get, values, repeat(-1, len(values))), dtype=np.intp, count=len(values)
        )
        for i in np.flatnonzero(found < 0).tolist():
            found[i] = self.index(values[i])
        return found

    @classmethod
    def fit(
        cls, values: Sequence[Any] | np.ndarray, categories: Sequence[str], min_share: float
    ) -> CategoryBins:
        """Contract levels (in contract order) seen in at least `min_share` of all rows."""
        seen: dict[Any, int] = {}
        for value in values:
            if not is_missing(value):
                seen[value] = seen.get(value, 0) + 1
        floor = min_share * len(values)
        return cls(tuple(c for c in categories if seen.get(c, 0) > 0 and seen[c] >= floor))


Bins = NumericBins | CategoryBins


def bin_counts(bins: Bins, values: Sequence[Any] | np.ndarray) -> np.ndarray:
    """How many of `values` fall in each bin (length `bins.size`)."""
    return np.bincount(bins.indices(values), minlength=bins.size)
