"""Loading the served versions (`tabml.serving.versions`) from real artifacts: a plain models
directory, bundles, a challenger from another checkout; verification, warm-up and per-version
parity with offline prediction; shadow scoring with a real challenger."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from tests.support.model_versions import bundle_of

from tabml.bundle import BundleError
from tabml.data import file_md5
from tabml.serving.provenance import ArtifactIntegrityError
from tabml.serving.shadow import ShadowJob, ShadowScorer
from tabml.serving.traffic_split import Route, parse_route
from tabml.serving.versions import (
    ModelSources,
    VersionConflictError,
    WarmUpError,
    load_served_models,
)

ROWS = 2_000


def sources(checkout: Path, **values: object) -> ModelSources:
    return ModelSources(model_dir=checkout / "models", dvc_lock=checkout / "dvc.lock", **values)  # type: ignore[arg-type]


def scored(version, records):  # validate as a request would, then score
    return version.score(version.predictor.parse_json(json.dumps(records).encode()))


def test_a_plain_models_directory_is_the_champion_as_before(champion_checkout, holdout) -> None:
    served = load_served_models(sources(champion_checkout))
    champion = served.champion
    assert served.challenger is None and served.effective_route == Route()
    assert champion.id == file_md5(champion_checkout / "models" / "model.txt")[:12]
    assert champion.name == "adult" and champion.verified and champion.lock is not None
    assert served.answering(b"any") is champion and served.shadow is None
    assert np.array_equal(scored(champion, holdout.records[:ROWS]), holdout.champion[:ROWS])


def test_a_bundle_serves_its_champion_and_challenger(
    champion_checkout, challenger_checkout, holdout, tmp_path
) -> None:
    bundle = bundle_of(tmp_path / "bundle", champion_checkout, challenger_checkout)
    served = load_served_models(ModelSources(bundle=bundle, route=parse_route("canary:0.2")))
    champion, challenger = served.champion, served.challenger
    assert challenger is not None and champion.id != challenger.id
    assert challenger.provenance is not None and challenger.verified
    assert served.roles() == {"champion": champion.id, "challenger": challenger.id}
    assert challenger.name == champion.name == "adult"
    records = holdout.records[:ROWS]
    assert np.array_equal(scored(champion, records), holdout.champion[:ROWS])
    assert np.array_equal(scored(challenger, records), holdout.challenger[:ROWS])
    assert not np.array_equal(holdout.champion[:ROWS], holdout.challenger[:ROWS])
    answered = [served.answering(f"key-{i}".encode()) for i in range(4_000)]
    share = sum(v is challenger for v in answered) / len(answered)
    assert abs(share - 0.2) < 0.03
    assert served.get(challenger.id) is challenger and served.get("v999") is None


def test_a_challenger_from_another_checkout_overrides_the_bundles(
    champion_checkout, challenger_checkout, tmp_path
) -> None:
    bundle = bundle_of(tmp_path / "bundle", champion_checkout)
    elsewhere = shutil.copytree(challenger_checkout, tmp_path / "other")
    served = load_served_models(
        ModelSources(bundle=bundle, challenger=elsewhere / "models", route=parse_route("shadow"))
    )
    assert served.challenger is not None and served.shadow is served.challenger
    assert served.challenger.source == (elsewhere / "models").resolve()
    # checked against DIR/../dvc.lock: a changed file is refused, naming it and both md5s
    model = elsewhere / "models" / "model.txt"
    model.write_bytes(model.read_bytes().replace(b"Tree=0", b"Tree=0 ", 1))
    with pytest.raises(BundleError, match=r"model\.txt: md5 .*, but .*dvc\.lock records"):
        load_served_models(ModelSources(bundle=bundle, challenger=elsewhere / "models"))


def test_the_challenger_lock_can_live_elsewhere(champion_checkout, challenger_checkout, tmp_path):
    models = shutil.copytree(challenger_checkout / "models", tmp_path / "copied" / "models")
    with pytest.raises(BundleError, match=r"dvc\.lock"):
        load_served_models(sources(champion_checkout, challenger=models))
    served = load_served_models(
        sources(
            champion_checkout,
            challenger=models,
            challenger_dvc_lock=challenger_checkout / "dvc.lock",
        )
    )
    assert served.challenger is not None


def test_a_challenger_that_is_the_champion_is_dropped(champion_checkout, tmp_path, caplog) -> None:
    served = load_served_models(
        sources(
            champion_checkout,
            challenger=champion_checkout / "models",
            route=parse_route("canary:0.5"),
        )
    )
    assert served.challenger is None and served.effective_route == Route()
    assert str(served.route) == "canary:0.5"
    assert any("is the champion itself" in r.getMessage() for r in caplog.records)


def test_two_models_under_one_version_id_are_refused(champion_checkout, challenger_checkout):
    challenger_id = file_md5(challenger_checkout / "models" / "model.txt")[:12]
    with pytest.raises(VersionConflictError, match="different models under one version id"):
        load_served_models(
            sources(
                champion_checkout,
                model_version=challenger_id,
                challenger=challenger_checkout / "models",
            )
        )


def test_tampered_files_are_refused(champion_checkout, challenger_checkout, tmp_path) -> None:
    bundle = bundle_of(tmp_path / "bundle", champion_checkout, challenger_checkout)
    served = load_served_models(ModelSources(bundle=bundle))
    profile = bundle / served.challenger.id / "reference_profile.json"  # type: ignore[union-attr]
    profile.write_text(profile.read_text() + " ")
    with pytest.raises(BundleError, match=r"reference_profile\.json: md5"):
        load_served_models(ModelSources(bundle=bundle))
    copy = champion_checkout.parent / "tampered"
    shutil.copytree(champion_checkout, copy)
    (copy / "models" / "model_metadata.json").write_text("{}")
    with pytest.raises(ArtifactIntegrityError, match=r"model_metadata\.json"):
        load_served_models(sources(copy))
    shutil.rmtree(copy)


def test_a_version_whose_warm_up_fails_is_not_served(champion_checkout, monkeypatch) -> None:
    served = load_served_models(sources(champion_checkout), warm_up=False)
    monkeypatch.setattr(
        served.champion.predictor, "predict", lambda records: np.full(len(records), np.nan)
    )
    with pytest.raises(WarmUpError, match="invalid probabilities"):
        served.warm_up()


def test_shadow_scores_of_a_real_challenger_equal_its_offline_ones(
    champion_checkout, challenger_checkout, holdout, tmp_path
) -> None:
    bundle = bundle_of(tmp_path / "bundle", champion_checkout, challenger_checkout)
    served = load_served_models(ModelSources(bundle=bundle, route=parse_route("shadow")))
    shadow = served.shadow
    assert shadow is not None
    results: dict[str, np.ndarray] = {}
    scorer = ShadowScorer(lambda job, p, _: results.__setitem__(job.request_id, p), capacity=5_000)
    scorer.start()
    try:
        started = time.perf_counter()
        for i in range(0, 500, 5):  # 100 requests of 5 records
            records = served.champion.predictor.parse_json(
                json.dumps(holdout.records[i : i + 5]).encode()
            )
            scorer.submit(ShadowJob(shadow, records, f"r{i}", time.time(), served.champion.id))
        submitting = time.perf_counter() - started
        assert scorer.wait_idle()
    finally:
        scorer.stop()
    assert len(results) == 100 and scorer.stats.scored == 500
    for i in range(0, 500, 5):
        assert np.array_equal(results[f"r{i}"], holdout.challenger[i : i + 5])
    assert submitting < 1.0  # parsing dominates; submit itself never waits


def test_where_the_champion_comes_from(champion_checkout, challenger_checkout, tmp_path) -> None:
    bundle = bundle_of(tmp_path / "bundle", champion_checkout, challenger_checkout)
    # a models directory that holds a bundle.json is that bundle (TABML_MODEL_DIR=<bundle>)
    served = load_served_models(ModelSources(model_dir=bundle, dvc_lock=tmp_path / "none"))
    assert served.challenger is not None and served.champion.provenance is not None
    # a plain models directory as --bundle: checked against DIR/../dvc.lock
    plain = load_served_models(
        ModelSources(bundle=challenger_checkout / "models", dvc_lock=tmp_path / "none")
    )
    assert plain.champion.id == served.challenger.id and plain.champion.lock is not None
    with pytest.raises(BundleError, match="does not exist"):
        load_served_models(ModelSources(bundle=tmp_path / "missing"))
