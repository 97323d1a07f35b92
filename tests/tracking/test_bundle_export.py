"""`tabml-registry export`, and promote / rollback with `--bundle`, on a real SQLite MLflow store:
two models trained and registered in a temp clone, exported as champion and challenger,
read back verified, tampered with, rewritten after alias moves, and a service told to reload
(the stand-in of tests/support/reload_stub.py, which speaks the service's reload interface)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tests.support.processes import background_process, free_port
from tests.support.project import PYTHON, command_env, run
from tests.support.reload_stub import command, reloads
from tests.tracking.conftest import tracking_env, train

from tabml.bundle import BundleError, load_bundle
from tabml.data import file_md5
from tabml.layout import MODEL_CARD_FILES, MODEL_FILE, SERVING_FILES
from tabml.serving.model_card import load_bundle_card

pytestmark = pytest.mark.slow

TOKEN = "export-test-token"


def registry(repo: Path, *args: str, check: bool = True, token: str | None = TOKEN):
    env = tracking_env(repo)
    env.pop("TABML_ADMIN_TOKEN", None)
    if token:
        env["TABML_ADMIN_TOKEN"] = token
    return run([PYTHON, "-m", "tabml.registry_cli", *args], cwd=repo, env=env, check=check)


def test_export_verify_promote_and_rollback_a_bundle(repo_copy: Path, tmp_path: Path) -> None:
    # v1: the default model (champion); v2: another model, registered without promotion.
    train(repo_copy)
    second = train(repo_copy, "model.learning_rate=0.1", "--no-promote")
    assert "v2 stays candidate" in second.stdout
    client = MlflowClient(f"sqlite:///{repo_copy}/mlflow.db")
    runs = {v: client.get_run(client.get_model_version("tabml-adult", v).run_id) for v in "12"}

    bundle_dir = tmp_path / "srv" / "bundle"
    out = registry(
        repo_copy, "export", "--alias", "champion", "--alias", "candidate",
        "--out", str(bundle_dir), "--route", "canary:0.2",
    )  # fmt: skip
    assert f"wrote bundle {bundle_dir}: champion v1, challenger v2, route canary:0.2" in out.stdout
    bundle = load_bundle(bundle_dir)
    assert bundle.roles == {"champion": "v1", "challenger": "v2"}
    assert bundle.route == "canary:0.2"
    for number, version in (("1", bundle.version("champion")), ("2", bundle.version("challenger"))):
        provenance, tags = version.provenance, runs[number].data.tags
        assert provenance.registered_model == "tabml-adult"
        assert provenance.registered_version == number
        assert provenance.run_id == runs[number].info.run_id
        assert provenance.model_md5 == tags["model_md5"] == file_md5(version.file(MODEL_FILE))
        assert provenance.data_md5 == tags["data_md5"]
        assert provenance.git_commit == tags["git_commit"]
        assert provenance.metrics["test_roc_auc"] == runs[number].data.metrics["test_roc_auc"]
        # the pyfunc's artifacts: what the service needs, drift monitoring's profile and the
        # model card included
        assert sorted(provenance.files) == sorted((*SERVING_FILES, *MODEL_CARD_FILES))
    assert bundle.version("champion").provenance.aliases == ("champion",)
    assert bundle.version("challenger").provenance.aliases == ("candidate",)
    # The workspace holds the last model trained: v2's files, byte for byte.
    for name in (*SERVING_FILES, *MODEL_CARD_FILES):
        workspace = (repo_copy / "models" / name).read_bytes()
        assert bundle.version("challenger").file(name).read_bytes() == workspace
    # and the service finds v2's card in the bundle (what GET /model-card answers)
    challenger = bundle.version("challenger")
    card = load_bundle_card(challenger.directory, challenger.provenance.files)
    assert card is not None
    assert card.markdown == (repo_copy / "models" / MODEL_CARD_FILES[0]).read_text()

    # A tampered copy fails to load, naming the file and both md5s.
    copy = tmp_path / "copy"
    shutil.copytree(bundle.path, copy)
    victim = copy / "v2" / "feature_transform.json"
    expected = file_md5(victim)
    victim.write_text(victim.read_text().replace("0", "1", 1))
    with pytest.raises(BundleError) as error:
        load_bundle(copy)
    assert str(victim) in str(error.value) and expected in str(error.value)
    assert file_md5(victim) in str(error.value)

    # Promote the challenger: the bundle is rewritten with it as champion; the service reloads.
    port, record = free_port(), tmp_path / "reloads.txt"
    url = f"http://127.0.0.1:{port}"
    with background_process(
        command(port, record),
        log=tmp_path / "stub.log",
        ready_url=f"{url}/health",
        env=command_env(TABML_ADMIN_TOKEN=TOKEN),
    ) as service:
        promoted = registry(
            repo_copy, "promote", "2", "--bundle", str(bundle_dir),
            "--reload-url", url, "--reload-pid", str(service.pid),
        )  # fmt: skip
        assert "champion v1 -> v2" in promoted.stdout
        assert f"wrote bundle {bundle_dir}: champion v2\n" in promoted.stdout
        assert f'reloaded {url}: {{"reloaded": true}}' in promoted.stdout
        assert reloads(record, 2) == ["http", "sighup"]
        after = load_bundle(bundle_dir)
        assert after.roles == {"champion": "v2"}
        assert after.route is None  # nothing left to route to: the canary route went with it
        assert after.version("champion").provenance.aliases == ("candidate", "champion")
        assert after.path != bundle.path and bundle.path.is_dir()  # old generation kept

        # A wrong token: the alias moves and the bundle is written, the reload is refused.
        refused = registry(
            repo_copy, "rollback", "--bundle", str(bundle_dir), "--reload-url", url,
            check=False, token="wrong",
        )  # fmt: skip
        assert refused.returncode == 1
        assert "bundle written, but the reload failed" in refused.stderr
        assert "401" in refused.stderr
        assert load_bundle(bundle_dir).roles == {"champion": "v1"}
        assert reloads(record, 2) == ["http", "sighup"]

    # No token at all: refused before anything moves.
    untouched = registry(
        repo_copy, "promote", "2", "--bundle", str(bundle_dir), "--reload-url", url,
        check=False, token=None,
    )  # fmt: skip
    assert untouched.returncode == 2 and "TABML_ADMIN_TOKEN" in untouched.stderr
    assert str(client.get_registered_model("tabml-adult").aliases["champion"]) == "1"
    assert load_bundle(bundle_dir).roles == {"champion": "v1"}
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    assert manifest["champion"] == "v1" and "challenger" not in manifest

    # Reload options need a bundle; two aliases on one version are refused.
    misuse = registry(repo_copy, "rollback", "--reload-pid", "1", check=False)
    assert misuse.returncode == 2 and "need --bundle" in misuse.stderr
    same = registry(
        repo_copy, "export", "--alias", "champion", "--alias", "champion",
        "--out", str(tmp_path / "same"), check=False,
    )  # fmt: skip
    assert same.returncode == 1 and "both point at v1" in same.stderr
    assert not (tmp_path / "same").exists()
