"""The model card: what the model is for, what it was trained on and how well it does, overall,
per slice, for fairness and against the baseline, written from the pipeline's real outputs.

The `model_card` stage writes it as Markdown and HTML (`models/model_card.md`, `.html`), DVC
outputs that must stay byte-reproducible in dvc.lock: they hold only what the inputs determine
(data md5, model md5, parameters, metrics). The volatile part of the lineage, the git commit and
the MLflow run, is appended where it is known: to the copy logged to the run
(`tabml.track`) and to the one `GET /model-card` serves (the service's own provenance).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the service imports this module; it has no scikit-learn (tabml.slices)
    from tabml.config import Params
    from tabml.model_metadata import ModelMetadata
    from tabml.slices import SliceReport

#: Where the appended lineage goes in the HTML document.
HTML_END = "</body>"

#: metric → how the card names it (overall and baseline tables)
_OVERALL = {
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC",
    "log_loss": "log loss (lower is better)",
    "brier": "Brier score (lower is better)",
    "accuracy": "accuracy",
    "f1": "F1",
    "precision": "precision",
    "recall": "recall",
}
_SLICE_COLUMNS = {
    "rows": "rows",
    "positive_rate": "positive rate",
    "predicted_positive_rate": "predicted positive rate",
    "roc_auc": "ROC AUC",
    "accuracy": "accuracy",
    "f1": "F1",
    "calibration_error": "calibration error",
}


@dataclass(frozen=True)
class CardInputs:
    """Everything the card is written from (each read from a pipeline output)."""

    params: Params
    metadata: ModelMetadata
    metrics: Mapping[str, Mapping[str, Any]]
    slices: SliceReport
    validation: Mapping[str, Mapping[str, Any]]
    data_md5: str
    model_md5: str


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows),
        "",
    ]


def _bullets(items: list[str]) -> list[str]:
    return [*(f"- {item}" for item in items), ""]


def _distribution_lines(check: Mapping[str, Any] | None) -> list[str]:
    """The validate stage's distribution check, in one sentence (none: an older report)."""
    if not check or not check.get("files"):
        return []
    psi = [
        (value, feature, file)
        for file, found in sorted(check["files"].items())
        for feature, value in sorted(found.get("psi", {}).items())
    ]
    shifted = sorted({f for found in check["files"].values() for f in found.get("shifted", [])})
    value, feature, file = max(psi)
    return [
        f"**Distribution against the reference profile** (PSI per feature, validate stage): "
        f"largest {value:.4f} (`{feature}` in `{file}`); shifted features: "
        f"{', '.join(f'`{f}`' for f in shifted) if shifted else 'none'}.",
        "",
    ]


def _data_section(inputs: CardInputs) -> list[str]:
    dataset, split = inputs.params.dataset, inputs.params.split
    rows = [
        [name, report.get("file"), report.get("rows"), report.get("positive_rate")]
        for name, report in sorted(inputs.validation.items())
        if "file" in report  # the splits; `distribution` is the check against the reference
    ]
    return [
        "## Data",
        "",
        f"Dataset `{dataset.name}`: the raw files of {dataset.source.describe()}, checked "
        "against the data contract "
        f"(`conf/dataset/{dataset.name}.yaml`) by the validate stage. Label: "
        f"`{dataset.label.column}` = `{dataset.label.positive}`.",
        "",
        f"**Data version** (md5 of `{dataset.data_dir}/`, as `{dataset.dvc_file.as_posix()}` "
        f"records it): `{inputs.data_md5}`",
        "",
        *_distribution_lines(inputs.validation.get("distribution")),
        *_table(["split", "file", "rows", "positive rate"], rows),
        f"Training file split into train and validation (early stopping) with "
        f"`valid_fraction={split.valid_fraction}`, stratified, seed {inputs.params.seed}; "
        "the test file is the held-out test set of every figure below.",
        "",
    ]


def _training_section(inputs: CardInputs) -> list[str]:
    meta, train = inputs.metadata, inputs.params.train
    booster = [
        [name, str(value)] for name, value in sorted(inputs.params.model.model_dump().items())
    ]
    return [
        "## Training",
        "",
        f"LightGBM {meta.lightgbm_version}, binary objective, {len(meta.feature_names)} "
        f"features ({len(meta.categorical_features)} categorical: "
        f"{', '.join(meta.categorical_features)}). Up to {train.num_boost_round} rounds with "
        f"early stopping after {train.early_stopping_rounds}; best iteration "
        f"{meta.best_iteration}. Deterministic (fixed seed {inputs.params.seed}, "
        f"{train.num_threads} threads, `deterministic=True`, `force_row_wise`). Decision "
        f"threshold {meta.threshold}.",
        "",
        *_table(["parameter", "value"], booster),
    ]


def _metrics_section(inputs: CardInputs) -> list[str]:
    test, baseline = inputs.metrics["test"], inputs.metrics.get("baseline", {})
    rows = [
        [label, test.get(name), baseline.get(name), _difference(test, baseline, name)]
        for name, label in _OVERALL.items()
        if name in test
    ]
    gate = inputs.params.gate
    margin = (
        f" The gate requires {gate.metric} at least {gate.baseline_margin} above the baseline's."
        if gate.baseline_margin is not None
        else ""
    )
    return [
        "## Metrics (test set)",
        "",
        f"{test.get('rows')} test rows. The baseline is a logistic regression on the same "
        "encoded features (categories one-hot, numbers standardised; the `baseline` stage)."
        + margin,
        "",
        *_table(["metric", "LightGBM", "baseline", "difference"], rows),
    ]


def _difference(test: Mapping[str, Any], baseline: Mapping[str, Any], name: str) -> float | None:
    if name not in baseline:
        return None
    return round(float(test[name]) - float(baseline[name]), 6)


def _slices_section(inputs: CardInputs) -> list[str]:
    config = inputs.params.evaluate
    lines = [
        "## Metrics per slice (test set)",
        "",
        f"Calibration error: expected calibration error over {config.calibration_bins} "
        f"equal-width probability bins. Slices under {config.min_slice_rows} rows are marked "
        "`*`: too few rows for a stable figure, and not counted as the worst slice.",
        "",
    ]
    for name, values in inputs.slices.items():
        spec = next(s for s in config.slices if s.name == name)
        rows = [
            [value + (" *" if int(m["rows"] or 0) < config.min_slice_rows else "")]
            + [m.get(key) for key in _SLICE_COLUMNS]
            for value, m in values.items()
        ]
        lines += [f"### {name} (column `{spec.column}`)", ""]
        lines += _table([name, *_SLICE_COLUMNS.values()], rows)
    from tabml.slices import worst_slice

    worst = worst_slice(inputs.slices, config.min_slice_rows)
    if worst is not None:
        lines += [f"Worst slice by ROC AUC: {worst[0]} ({worst[1]:.4f}).", ""]
    return lines


def _fairness_section(inputs: CardInputs) -> list[str]:
    fairness = inputs.metrics.get("fairness", {})
    metrics = ("demographic_parity_difference", "equalized_odds_difference")
    rows = [
        [attribute, *(fairness.get(f"{attribute}_{m}") for m in metrics)]
        for attribute in inputs.params.evaluate.sensitive
    ]
    limits = inputs.params.gate.max_fairness_gap
    rule = (
        "Gate maxima: " + ", ".join(f"{m} {v}" for m, v in sorted(limits.items())) + "."
        if limits
        else "The gate sets no maximum."
    )
    return [
        "## Fairness (test set)",
        "",
        "Between the groups of each sensitive attribute (fairlearn): demographic parity "
        "difference, the largest gap in the rate of positive decisions; equalized odds "
        "difference, the larger of the largest gaps in true and false positive rate. "
        f"0 is parity. {rule}",
        "",
        *_table(["attribute", "demographic parity difference", "equalized odds difference"], rows),
    ]


def _limitations(inputs: CardInputs) -> list[str]:
    config = inputs.params.evaluate
    small = [
        f"{name}={value} ({m['rows']} rows)"
        for name, values in inputs.slices.items()
        for value, m in values.items()
        if int(m["rows"] or 0) < config.min_slice_rows
    ]
    measured = list(inputs.params.model_card.limitations)
    if small:
        measured.append(f"Slices under {config.min_slice_rows} test rows: {', '.join(small)}.")
    return ["## Limitations", "", *_bullets(measured)]


def render_markdown(inputs: CardInputs) -> str:
    """The card as Markdown; the same inputs give the same bytes."""
    card = inputs.params.model_card
    lines = [
        f"# Model card: {card.title}",
        "",
        f"Registered model `{inputs.params.tracking.registered_model}`; model file md5 "
        f"`{inputs.model_md5}`.",
        "",
        "## Intended use",
        "",
        *_bullets(card.intended_use),
        "## Out of scope",
        "",
        *_bullets(card.out_of_scope),
        *_data_section(inputs),
        *_training_section(inputs),
        *_metrics_section(inputs),
        *_slices_section(inputs),
        *_fairness_section(inputs),
        *_limitations(inputs),
        "## Lineage",
        "",
        *_table(
            ["", ""],
            [
                [f"data version (md5 of {inputs.params.dataset.data_dir}/)", inputs.data_md5],
                ["model md5", inputs.model_md5],
            ],
        ),
        "The git commit and the MLflow run are not part of this file (it is a DVC output and "
        "must be byte-reproducible); they are appended to the copy logged to the MLflow run and "
        "to the card the service serves.",
        "",
    ]
    return "\n".join(lines)


def render_html(markdown_text: str, title: str) -> str:
    """A self-contained HTML page of the Markdown card (no script, no external resource)."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n"
        "body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; }\n"
        "table { border-collapse: collapse; margin: 0.5em 0; }\n"
        "th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }\n"
        "code { background: #f4f4f4; }\n</style>\n</head>\n<body>\n"
        f"{body}\n{HTML_END}\n</html>\n"
    )


def lineage_markdown(heading: str, lineage: Mapping[str, str | None]) -> str:
    """A `### heading` table of volatile lineage (commit, run, version), appended to a card."""
    rows = [[key, f"`{value}`" if value else "n/a"] for key, value in lineage.items()]
    return "\n".join([f"### {heading}", "", *_table(["", ""], rows)])


def lineage_html(heading: str, lineage: Mapping[str, str | None]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td><code>{html.escape(value or 'n/a')}</code></td></tr>\n"
        for key, value in lineage.items()
    )
    return f"<h3>{html.escape(heading)}</h3>\n<table>\n{rows}</table>\n"


def with_lineage(
    markdown_card: str, html_card: str, heading: str, lineage: Mapping[str, str | None]
) -> tuple[str, str]:
    """Both forms of the card with the lineage table added at their end."""
    head, sep, tail = html_card.rpartition(HTML_END)
    if not sep:
        head, tail = html_card, ""
    return (
        markdown_card.rstrip("\n") + "\n\n" + lineage_markdown(heading, lineage),
        head + lineage_html(heading, lineage) + sep + tail,
    )
