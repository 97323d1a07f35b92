"""Behaviour tests of the workspace's trained model: invariance, directional expectations and
minimum functionality on the held-out rows, each with its tolerance and the share it needs
(tests/model/behaviour.py). Every test prints the share it measured."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from tests.model import behaviour
from tests.model.behaviour import Model

pytestmark = pytest.mark.slow


def _report(record_property: Any, name: str, share: float, required: float) -> str:
    record_property(name, round(share, 6))
    line = f"{name}: {share:.2%} of held-out rows (at least {required:.0%} required)"
    print(line)
    return line


def test_fnlwgt_within_its_range_barely_moves_the_probability(
    model: Model, held_out: Any, training: Any, record_property: Any
) -> None:
    moved = behaviour.fnlwgt_resampled(model, held_out, training)
    assert len(moved) == 16281
    share = float(np.mean(moved < behaviour.FNLWGT_TOLERANCE))
    line = _report(record_property, "fnlwgt_invariant_share", share, behaviour.FNLWGT_SHARE)
    assert share >= behaviour.FNLWGT_SHARE, f"{line}; largest move {moved.max():.3f}"


@pytest.mark.parametrize(
    ("column", "by", "ceiling"), [("capital_gain", 10_000, 99_999), ("education_num", 1, 16)]
)
def test_more_does_not_lower_the_probability(
    model: Model, held_out: Any, column: str, by: int, ceiling: int, record_property: Any
) -> None:
    drop = behaviour.raised(model, held_out, column, by, ceiling)
    share = float(np.mean(drop <= behaviour.DIRECTION_TOLERANCE))
    name = f"{column}_plus_{by}_not_lower_share"
    line = _report(record_property, name, share, behaviour.DIRECTION_SHARE)
    assert share >= behaviour.DIRECTION_SHARE, f"{line}; largest drop {drop.max():.3f}"


def test_clear_cut_records_are_classified_as_expected(model: Model) -> None:
    probabilities = behaviour.clear_cut_probabilities(model)
    confidence = behaviour.CLEAR_CUT_CONFIDENCE
    for (label, record), p in zip(behaviour.CLEAR_CUT_RECORDS, probabilities, strict=True):
        print(f"{label}: p={p:.4f} for {record}")
        if label == ">50K":
            assert p >= confidence, (p, record)
        else:
            assert p <= 1 - confidence, (p, record)


@pytest.mark.parametrize("name", sorted(behaviour.CLEAR_CUT_SLICES))
def test_clear_cut_slices_are_classified_as_their_label(
    model: Model, held_out: Any, name: str, record_property: Any
) -> None:
    share, rows = behaviour.slice_agreement(model, held_out, name)
    assert rows > 500
    line = _report(record_property, name, share, behaviour.CLEAR_CUT_SLICE_SHARE)
    assert share >= behaviour.CLEAR_CUT_SLICE_SHARE, line
