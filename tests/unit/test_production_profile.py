"""The production profile (`+env=production`) composes and refuses a local tracking store."""

from __future__ import annotations

import pytest
from tests.support.project import REPO_ROOT

from tabml.pipeline import compose
from tabml.tracking_store import TrackingUnavailableError, check_reachable

CONF = REPO_ROOT / "conf"


def test_default_profile_allows_the_embedded_store() -> None:
    params, _ = compose([], CONF)
    assert params.tracking.require_server is False
    check_reachable("sqlite:////tmp/mlflow.db", require_server=params.tracking.require_server)


def test_production_profile_requires_a_server_and_a_stricter_gate() -> None:
    params, text = compose(["+env=production"], CONF)
    assert params.tracking.require_server is True
    assert params.gate.minimum == 0.92 and params.gate.max_drop_from_champion == 0.0
    assert "require_server: true" in text
    with pytest.raises(TrackingUnavailableError, match="MLFLOW_TRACKING_URI=http"):
        check_reachable("sqlite:////tmp/mlflow.db", require_server=True)
