"""The distribution check (schema skew): does a raw file look like the data the model knew?

Every row of a file can pass the contract while the file as a whole is unlike the training
data (a batch from one age group, a source that changed its coding). Each file is binned with
the reference profile's bins and compared feature by feature by PSI: the `tabml.monitoring`
math and bands the service applies to live traffic, so "a significant shift" means the same in
the validate stage as on `/metrics`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tabml.errors import TabmlError
from tabml.monitoring import (
    ReferenceProfile,
    Verdict,
    bin_counts,
    population_stability_index,
    verdict,
)

if TYPE_CHECKING:
    import pandas as pd

    from tabml.config import MonitorConfig

#: The band that counts as a sharp shift (warns or fails, by `validation.distribution_shift`).
SHIFTED: Verdict = "significant"


class DistributionShiftError(TabmlError, ValueError):
    """A raw file's distribution differs sharply from the reference and the setting is `fail`."""


@dataclass(frozen=True)
class FileSkew:
    """Per-feature PSI of one file against the reference; judged only with enough rows."""

    source: str
    rows: int
    psi: dict[str, float]
    judged: bool
    verdicts: dict[str, Verdict] = field(default_factory=dict)

    @property
    def shifted(self) -> list[str]:
        return [name for name, band in self.verdicts.items() if band == SHIFTED]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "psi": {name: round(value, 6) for name, value in self.psi.items()},
            "judged": self.judged,
            "shifted": self.shifted,
        }

    def messages(self, config: MonitorConfig) -> list[str]:
        return [
            f"{self.source}: column {name!r} PSI {self.psi[name]:.3f} against the reference "
            f"profile (significant shift: >= monitor.psi_alert {config.psi_alert})"
            for name in self.shifted
        ]


def file_skew(
    frame: pd.DataFrame, profile: ReferenceProfile, config: MonitorConfig, source: str
) -> FileSkew:
    """PSI of every profiled feature of a typed frame (as `validate_raw` returns it).

    Files with fewer than `monitor.min_window_records` rows get their PSI reported but not
    judged: the service ignores drift in windows that small for the same reason (with 10 bins,
    fewer than about 50 rows per bin make the PSI mostly sampling noise).
    """
    psi = {
        name: population_stability_index(
            histogram.fractions,
            bin_counts(histogram.bins, frame[name].to_numpy()),
            config.epsilon,
        )
        for name, histogram in profile.features.items()
        if name in frame.columns  # a reference made before a column left the contract
    }
    judged = len(frame) >= config.min_window_records
    verdicts = (
        {name: verdict(value, config) for name, value in psi.items() if not math.isnan(value)}
        if judged
        else {}
    )
    return FileSkew(source, len(frame), psi, judged, verdicts)
