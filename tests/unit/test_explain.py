"""TreeSHAP by raw input column (tabml.explain) on a small real LightGBM model with a derived
feature, and the strict parsing of /predict's explanation query."""

from __future__ import annotations

import numpy as np
import pytest

from tabml.explain import RawAttribution, mean_abs_contributions
from tabml.model import booster_params, train_booster
from tabml.serving.explanations import ExplainOptions, options_from_query
from tabml.serving.predictor import RequestRejected

NAMES = ["age", "capital_gain", "capital_loss", "color", "capital_net"]


@pytest.fixture(scope="module")
def model() -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 2000
    gain = np.where(rng.random(n) < 0.2, rng.integers(1, 20000, n), 0).astype(float)
    loss = np.where(rng.random(n) < 0.3, rng.integers(1, 20000, n), 0)
    color = rng.integers(0, 3, n).astype(float)
    color[rng.random(n) < 0.1] = np.nan
    age = rng.integers(17, 90, n).astype(float)
    x = np.column_stack([age, gain, loss, color, gain - loss])
    y = ((gain - loss > 2000) ^ (age > 60) ^ (color == 1)).astype(float)
    result = train_booster(
        x,
        y,
        x[:400],
        y[:400],
        feature_names=NAMES,
        categorical_features=["color"],
        params=booster_params({"num_leaves": 7}, seed=1, num_threads=1),
        num_boost_round=40,
        early_stopping_rounds=40,
    )
    return result.booster, x


def test_raw_contributions_sum_to_the_raw_margin(model: tuple[object, np.ndarray]) -> None:
    booster, x = model
    explained = RawAttribution(NAMES).explain(booster, x)
    assert explained.features == ["age", "capital_gain", "capital_loss", "color"]
    margin = booster.predict(x, raw_score=True)
    np.testing.assert_allclose(explained.margins(), margin, rtol=0, atol=1e-9)


def test_a_derived_contribution_goes_to_its_inputs_by_their_size(
    model: tuple[object, np.ndarray],
) -> None:
    booster, x = model
    shap = booster.predict(x, pred_contrib=True)
    assert np.abs(shap[:, 4]).max() > 0.1  # the model does use capital_net
    explained = RawAttribution(NAMES).to_raw(shap, x)
    gain_only = (x[:, 1] > 0) & (x[:, 2] == 0)
    np.testing.assert_allclose(
        explained.contributions[gain_only, 1], (shap[:, 1] + shap[:, 4])[gain_only], atol=1e-12
    )
    np.testing.assert_allclose(explained.contributions[gain_only, 2], shap[gain_only, 2])
    neither = (x[:, 1] == 0) & (x[:, 2] == 0)
    np.testing.assert_allclose(
        explained.contributions[neither, 2], (shap[:, 2] + shap[:, 4] / 2)[neither], atol=1e-12
    )
    np.testing.assert_array_equal(explained.contributions[:, 3], shap[:, 3])  # categorical


def test_top_k_keeps_the_largest_in_order(model: tuple[object, np.ndarray]) -> None:
    booster, x = model
    explained = RawAttribution(NAMES).explain(booster, x[:50])
    full, top = explained.as_dicts(0), explained.as_dicts(2)
    for whole, two, row in zip(full, top, explained.contributions, strict=True):
        assert len(whole["contributions"]) == 4 and len(two["contributions"]) == 2
        assert two["contributions"] == whole["contributions"][:2]
        values = [abs(c["value"]) for c in whole["contributions"]]
        assert values == sorted(values, reverse=True)
        assert sorted(abs(row))[::-1][:2] == values[:2]
    assert explained.as_dicts(99) == full


def test_global_importance_is_seeded_and_sorted(model: tuple[object, np.ndarray]) -> None:
    booster, x = model
    kwargs = {"rows": 300, "seed": 7, "num_threads": 1}
    first = mean_abs_contributions(booster, x, NAMES, **kwargs)
    assert first == mean_abs_contributions(booster, x, NAMES, **kwargs)
    values = [row["mean_abs_contribution"] for row in first]
    assert values == sorted(values, reverse=True) and {r["feature"] for r in first} == set(
        NAMES[:4]
    )
    everything = mean_abs_contributions(booster, x, NAMES, rows=0, seed=7, num_threads=1)
    assert everything != first


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", None),
        (b"explain=false", None),
        (b"other=1", None),
        (b"top_k=3", None),
        (b"explain=true", ExplainOptions(0)),
        (b"explain=true&top_k=3", ExplainOptions(3)),
        (b"top_k=0&explain=true&other=x", ExplainOptions(0)),
    ],
)
def test_explanation_query(query: bytes, expected: ExplainOptions | None) -> None:
    assert options_from_query(query) == expected


@pytest.mark.parametrize(
    ("query", "field", "kind"),
    [
        (b"explain=true&top_k=-1", "top_k", "greater_than_equal"),
        (b"explain=true&top_k=1.5", "top_k", "int_parsing"),
        (b"explain=true&top_k=three", "top_k", "int_parsing"),
        (b"explain=true&top_k=", "top_k", "int_parsing"),
        (b"top_k=-2", "top_k", "greater_than_equal"),
        (b"explain=yes", "explain", "bool_parsing"),
        (b"explain=True", "explain", "bool_parsing"),
        (b"explain=true&explain=false", "explain", "duplicate_parameter"),
        (b"explain=true&top_k=1&top_k=2", "top_k", "duplicate_parameter"),
    ],
)
def test_bad_explanation_query_is_a_422_naming_the_parameter(
    query: bytes, field: str, kind: str
) -> None:
    with pytest.raises(RequestRejected) as caught:
        options_from_query(query)
    assert caught.value.status == 422
    [error] = caught.value.detail
    assert (error["field"], error["type"]) == (field, kind)
    assert f"query parameter {field!r}" in error["message"]
