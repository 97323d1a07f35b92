"""PNG figures of the DVC plot data for an MLflow run (MLflow shows images, not Vega specs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def render_plots(plots_dir: Path, curve: list[dict]) -> dict[str, Any]:
    """Figure name → matplotlib figure: ROC, precision-recall, calibration, importance (gain,
    mean |TreeSHAP|), AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def load(name: str) -> list[dict]:
        return json.loads((plots_dir / f"{name}.json").read_text())

    figures = {}

    def xy(name, rows, x, y, title, diagonal=False):
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([r[x] for r in rows], [r[y] for r in rows])
        if diagonal:
            ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set(xlabel=x, ylabel=y, title=title)
        figures[name] = fig

    xy("roc", load("roc"), "fpr", "tpr", "ROC curve (test)", diagonal=True)
    xy("precision_recall", load("precision_recall"), "recall", "precision", "Precision-recall")
    xy(
        "calibration",
        load("calibration"),
        "mean_predicted",
        "fraction_positive",
        "Calibration (test)",
        diagonal=True,
    )
    importance = sorted(load("feature_importance"), key=lambda r: r["gain"])
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.barh([r["feature"] for r in importance], [r["gain"] for r in importance])
    ax.set(xlabel="gain", title="Feature importance")
    fig.tight_layout()
    figures["feature_importance"] = fig
    contributions = load("contribution_importance")[::-1]  # stored largest first
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.barh(
        [r["feature"] for r in contributions], [r["mean_abs_contribution"] for r in contributions]
    )
    ax.set(xlabel="mean |TreeSHAP contribution| (logit)", title="Importance by raw input")
    fig.tight_layout()
    figures["contribution_importance"] = fig
    fig, ax = plt.subplots(figsize=(5, 4))
    for key in ("train_auc", "valid_auc"):
        ax.plot([r["iteration"] for r in curve], [r[key] for r in curve], label=key)
    ax.set(xlabel="iteration", ylabel="AUC", title="AUC by boosting iteration")
    ax.legend()
    figures["training_curve"] = fig
    return figures
