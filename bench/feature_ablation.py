"""Does every feature earn its place? Leave-one-feature-out retraining on the workspace's
features, against the model with all of them, in the same run (ML Test Score, Data 2).

    python bench/feature_ablation.py              # about 2 minutes on 2 cores
    python bench/feature_ablation.py --seeds 5

For the full feature set and for each feature left out, a LightGBM model is trained with the
workspace model's parameters (models/model_metadata.json; learning rate 0.1 for speed, the same
for every fit), early-stopped on the validation split and scored on the test split, once per
seed (bagging and feature fractions make the seed matter). A feature's delta is the mean over
seeds of (test ROC AUC without it - with everything); the seeds' spread of the full model is
the noise band. A feature whose removal raises the AUC by more than the band does not earn its
place. Results: bench/results/feature_ablation.json (needs `python src/train.py` first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "feature_ablation.json"
LEARNING_RATE = 0.1


def main() -> int:
    from sklearn.metrics import roc_auc_score

    from tabml.columnar import read_columns
    from tabml.features import TARGET
    from tabml.layout import METADATA_FILE, MODELS_DIR
    from tabml.model import predict_proba, train_booster
    from tabml.model_metadata import ModelMetadata

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    meta = ModelMetadata.load(REPO / MODELS_DIR / METADATA_FILE)
    splits = {
        name: read_columns(REPO / "artifacts" / "features" / f"{name}.parquet")
        for name in ("train", "valid", "test")
    }
    labels = {name: np.asarray(cols[TARGET]).astype(int) for name, cols in splits.items()}

    def test_auc(features: list[str], seed: int) -> float:
        x = {name: np.column_stack([cols[f] for f in features]) for name, cols in splits.items()}
        params = {**meta.params, "learning_rate": LEARNING_RATE, "num_threads": 1, "seed": seed}
        result = train_booster(
            x["train"],
            labels["train"],
            x["valid"],
            labels["valid"],
            feature_names=features,
            categorical_features=[f for f in meta.categorical_features if f in features],
            params=params,
            num_boost_round=2000,
            early_stopping_rounds=30,
        )
        return float(roc_auc_score(labels["test"], predict_proba(result.booster, x["test"])))

    seeds = list(range(args.seeds))
    full = [test_auc(meta.feature_names, seed) for seed in seeds]
    band = max(full) - min(full)
    print(f"all {len(meta.feature_names)} features: test ROC AUC {statistics.mean(full):.5f} "
          f"(seeds spread {band:.5f})", flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    for feature in meta.feature_names:
        kept = [f for f in meta.feature_names if f != feature]
        deltas = [test_auc(kept, seed) - base for seed, base in zip(seeds, full, strict=True)]
        delta = statistics.mean(deltas)
        rows.append(
            {
                "feature": feature,
                "mean_delta_auc_without": round(delta, 5),
                "deltas": [round(d, 5) for d in deltas],
                "earns_its_place": delta <= band,
            }
        )
        print(f"  without {feature:<16} {delta:+.5f}", flush=True)
    rows.sort(key=lambda row: row["mean_delta_auc_without"])
    results = {
        "benchmark": "leave-one-feature-out retraining vs all features, test ROC AUC",
        "baseline": "the same parameters with every feature, same seeds, same run",
        "settings": {"seeds": seeds, "learning_rate": LEARNING_RATE, "params": meta.params},
        "full_test_roc_auc": [round(v, 5) for v in full],
        "noise_band": round(band, 5),
        "features": rows,
        "not_earning_their_place": [r["feature"] for r in rows if not r["earns_its_place"]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"not earning their place: {results['not_earning_their_place'] or 'none'}")
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
