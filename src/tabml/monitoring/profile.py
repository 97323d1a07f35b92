"""The reference profile: how the validation split is distributed, bin by bin.

Built once per model by the pipeline and shipped with it, so the service, the batch report and
the loop compare live traffic with the same reference. It also carries the `monitor`
configuration it was built with (window sizes, epsilon, thresholds): the serving image has no
params.yaml, so this verified artifact is how conf/monitor reaches the service. The JSON file has
sorted keys and features in contract order: the same data and configuration give a
byte-identical file, which keeps the DVC stage that writes it reproducible.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tabml.atomic import write_text_atomic
from tabml.monitoring.bins import Bins, CategoryBins, NumericBins, bin_counts

if TYPE_CHECKING:
    from tabml.config import MonitorConfig
    from tabml.contract import DataContract

FORMAT = 1


@dataclass(frozen=True)
class Histogram:
    """Bins and the reference fraction of rows in each (fractions sum to 1)."""

    bins: Bins
    fractions: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.fractions) != self.bins.size:
            raise ValueError(f"{len(self.fractions)} fractions for {self.bins.size} bins")

    @classmethod
    def of(cls, bins: Bins, values: Sequence[Any] | np.ndarray) -> Histogram:
        counts = bin_counts(bins, values)
        return cls(bins, tuple(float(c) for c in counts / max(len(values), 1)))

    def to_dict(self) -> dict[str, Any]:
        if isinstance(self.bins, NumericBins):
            return {
                "kind": "numeric",
                "edges": list(self.bins.edges),
                "fractions": [*self.fractions],
            }
        return {
            "kind": "category",
            "levels": list(self.bins.levels),
            "fractions": [*self.fractions],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Histogram:
        kind = raw["kind"]
        if kind == "numeric":
            bins: Bins = NumericBins(tuple(float(e) for e in raw["edges"]))
        elif kind == "category":
            bins = CategoryBins(tuple(str(level) for level in raw["levels"]))
        else:
            raise ValueError(f"unknown histogram kind {kind!r}")
        return cls(bins, tuple(float(f) for f in raw["fractions"]))


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-feature histograms (contract order) and the predicted-score histogram of `rows` rows,
    with the monitor configuration that built them (None for a profile made without one)."""

    rows: int
    features: Mapping[str, Histogram]
    score: Histogram
    monitor: MonitorConfig | None = None

    def to_json(self) -> str:
        document: dict[str, Any] = {
            "format": FORMAT,
            "rows": self.rows,
            "features": [{"name": name, **h.to_dict()} for name, h in self.features.items()],
            "score": self.score.to_dict(),
        }
        if self.monitor is not None:
            document["monitor"] = self.monitor.model_dump(mode="json")
        return json.dumps(document, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"profile format {raw.get('format')!r}, expected {FORMAT}")
        monitor = None
        if "monitor" in raw:
            from tabml.config import MonitorConfig  # pydantic, only for profiles that carry it

            monitor = MonitorConfig.model_validate(raw["monitor"])
        return cls(
            rows=int(raw["rows"]),
            features={f["name"]: Histogram.from_dict(f) for f in raw["features"]},
            score=Histogram.from_dict(raw["score"]),
            monitor=monitor,
        )

    def save(self, path: Path) -> None:
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> ReferenceProfile:
        return cls.from_json(Path(path).read_text())


def build_profile(
    columns: Mapping[str, Sequence[Any] | np.ndarray],
    contract: DataContract,
    scores: np.ndarray,
    config: MonitorConfig,
) -> ReferenceProfile:
    """Profile the monitored contract features and the model's scores on the same rows.

    Numeric columns hold numbers with NaN or None for missing; categorical ones str or None.
    Score bins are quantiles of the scores rather than fixed 0.1-wide bins: on this data half
    the scores are below 0.05 (47 %), so fixed bins would put most traffic in one bin and leave
    near-empty ones whose PSI terms are sampling noise; quantile bins hold ~10 % each.
    """
    scores = np.asarray(scores, dtype=np.float64)
    excluded = set(config.exclude_features)
    unknown = sorted(excluded - set(contract.feature_names))
    if unknown:
        raise ValueError(f"exclude_features names unknown column(s) {unknown}")
    features: dict[str, Histogram] = {}
    for spec in contract.columns:
        if spec.name in excluded:
            continue
        values = columns[spec.name]
        if len(values) != len(scores):
            raise ValueError(f"column {spec.name!r} has {len(values)} rows, scores {len(scores)}")
        if spec.categories is not None:
            bins: Bins = CategoryBins.fit(values, spec.categories, config.min_category_share)
        else:
            bins = NumericBins.fit(values, config.numeric_bins)
        features[spec.name] = Histogram.of(bins, values)
    score = Histogram.of(NumericBins.fit(scores, config.score_bins), scores)
    return ReferenceProfile(rows=len(scores), features=features, score=score, monitor=config)
