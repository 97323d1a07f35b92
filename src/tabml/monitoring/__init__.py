"""Production monitoring math, shared by the service, the batch report and the loop.

Pure numpy and the standard library (no pandas, prometheus-client or FastAPI): the service calls
it on its hot path, and one implementation means `/metrics`, the report and the loop's triggers
can never disagree about a PSI or a realized accuracy.
"""

from tabml.monitoring.bins import CategoryBins, NumericBins, bin_counts, is_missing
from tabml.monitoring.drift import (
    DriftWindow,
    FeatureBinner,
    Verdict,
    population_stability_index,
    verdict,
)
from tabml.monitoring.profile import Histogram, ReferenceProfile, build_profile
from tabml.monitoring.realized import RealizedWindow, accuracy, roc_auc

__all__ = [
    "CategoryBins",
    "DriftWindow",
    "FeatureBinner",
    "Histogram",
    "NumericBins",
    "RealizedWindow",
    "ReferenceProfile",
    "Verdict",
    "accuracy",
    "bin_counts",
    "build_profile",
    "is_missing",
    "population_stability_index",
    "roc_auc",
    "verdict",
]
