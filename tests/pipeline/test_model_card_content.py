"""The model card the pipeline wrote into the workspace says what the real outputs say: every
figure is checked against reports/, models/, data.dvc and dvc.lock, and the card rebuilds
byte-identically from them."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tests.support.project import REPO_ROOT, run

from tabml.config import load_params
from tabml.data import dir_md5, file_md5, pinned_dir_md5
from tabml.lockfile import read_lock
from tabml.model_card import CardInputs, render_html, render_markdown
from tabml.model_metadata import ModelMetadata

pytestmark = pytest.mark.slow


def _fmt(value: float) -> str:
    return f"{value:.4f}"


@pytest.fixture(scope="module")
def card(pipeline_outputs: Path) -> str:
    return (pipeline_outputs / "model_card.md").read_text()


def test_card_names_the_data_and_model_versions_dvc_records(card: str) -> None:
    lock = read_lock(REPO_ROOT / "dvc.lock")
    data_md5 = pinned_dir_md5(REPO_ROOT / "data.dvc")
    assert lock.inputs["data"] == f"{data_md5}.dir"
    assert f"**Data version** (md5 of `data/`, as `data.dvc` records it): `{data_md5}`" in card
    model_md5 = lock.output_md5("models/model.txt", "train")
    assert f"| model md5 | {model_md5} |" in card
    validation = json.loads((REPO_ROOT / "reports" / "data_validation.json").read_text())
    distribution = validation.pop("distribution")
    for name, report in validation.items():
        row = f"| {name} | {report['file']} | {report['rows']} | {_fmt(report['positive_rate'])} |"
        assert row in card
    largest = max(v for found in distribution["files"].values() for v in found["psi"].values())
    assert f"largest {largest:.4f} (`" in card and "shifted features: none." in card
    assert "| distribution |" not in card


def test_card_shows_the_recorded_metrics_baseline_slices_and_fairness(card: str) -> None:
    metrics = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text())
    test, baseline = metrics["test"], metrics["baseline"]
    difference = round(test["roc_auc"] - baseline["roc_auc"], 6)
    expected = (
        f"| ROC AUC | {_fmt(test['roc_auc'])} | {_fmt(baseline['roc_auc'])} | {_fmt(difference)} |"
    )
    assert expected in card
    slices = json.loads((REPO_ROOT / "reports" / "slices.json").read_text())
    for name, values in slices.items():
        assert f"### {name} (column `" in card
        for value, m in values.items():
            row = [
                value,
                str(m["rows"]),
                _fmt(m["positive_rate"]),
                _fmt(m["predicted_positive_rate"]),
            ]
            row += [_fmt(m[k]) for k in ("roc_auc", "accuracy", "f1", "calibration_error")]
            assert "| " + " | ".join(row) + " |" in card, (name, value)
    fairness = metrics["fairness"]
    for attribute in ("sex", "race"):
        parity = fairness[f"{attribute}_demographic_parity_difference"]
        odds = fairness[f"{attribute}_equalized_odds_difference"]
        assert f"| {attribute} | {_fmt(parity)} | {_fmt(odds)} |" in card
    params = load_params(REPO_ROOT / "params.yaml")
    assert f"| num_leaves | {params.model.num_leaves} |" in card
    meta = ModelMetadata.load(REPO_ROOT / "models" / "model_metadata.json")
    assert f"best iteration {meta.best_iteration}" in card
    for text in (*params.model_card.intended_use, *params.model_card.limitations):
        assert text in card


def test_card_holds_no_volatile_lineage_and_rebuilds_byte_identically(card: str) -> None:
    commit = run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT).stdout.strip()
    assert commit not in card and "MLflow run |" not in card
    params = load_params(REPO_ROOT / "params.yaml")
    inputs = CardInputs(
        params=params,
        metadata=ModelMetadata.load(REPO_ROOT / "models" / "model_metadata.json"),
        metrics=json.loads((REPO_ROOT / "reports" / "metrics.json").read_text()),
        slices=json.loads((REPO_ROOT / "reports" / "slices.json").read_text()),
        validation=json.loads((REPO_ROOT / "reports" / "data_validation.json").read_text()),
        data_md5=dir_md5(REPO_ROOT / "data"),
        model_md5=file_md5(REPO_ROOT / "models" / "model.txt"),
    )
    assert render_markdown(inputs) == card
    page = (REPO_ROOT / "models" / "model_card.html").read_text()
    assert render_html(card, params.model_card.title) == page


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def test_html_card_renders_every_markdown_table_without_scripts(card: str) -> None:
    page = (REPO_ROOT / "models" / "model_card.html").read_text()
    parser = _Tables()
    parser.feed(page)
    markdown_tables = sum(  # delimiter rows: | --- | --- |
        1 for line in card.splitlines() if "---" in line and set(line) <= set("|- ")
    )
    assert parser.tags.count("table") == markdown_tables
    assert "script" not in parser.tags and "http" not in page.split("</head>")[0]
