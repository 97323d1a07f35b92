"""Model bundles on real files: checkouts with a dvc.lock in DVC's layout, bundles written,
replaced, tampered with and read back."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from tests.bundles import DATA_MD5, PROFILE, checkout, md5

from tabml.bundle import (
    MANIFEST_FILE,
    PROVENANCE_FILE,
    BundleError,
    bundle_from_models_dir,
    describe_version,
    load_bundle,
    reroute_bundle,
    write_bundle,
)
from tabml.layout import ARTIFACT_FILES, MODEL_FILE
from tabml.lockfile import read_lock


def tamper(path: Path) -> tuple[str, str]:
    """Change one byte of `path`; return its md5 before and after."""
    before = md5(path.read_bytes())
    path.write_bytes(path.read_bytes() + b" ")
    return before, md5(path.read_bytes())


def registered(models: Path, number: str, *aliases: str):
    return describe_version(
        models,
        read_lock(models.parent / "dvc.lock"),
        registered_model="tabml-adult",
        registered_version=number,
        aliases=aliases,
        run_id=f"run{number}",
        git_commit="0" * 40,
        metrics={"test_roc_auc": 0.93},
        source=f"models:/tabml-adult/{number}",
    )


# ------------------------------------------------------------------------- a models directory


def test_models_dir_is_a_one_version_bundle(tmp_path: Path) -> None:
    models = checkout(tmp_path, "a")
    bundle = bundle_from_models_dir(models, git_commit="abc")
    model_md5 = md5((models / MODEL_FILE).read_bytes())
    assert (bundle.champion, bundle.challenger) == (model_md5[:12], None)
    version = bundle.version("champion")
    assert version.directory == models.resolve()
    provenance = version.provenance
    assert sorted(provenance.files) == sorted([*ARTIFACT_FILES, PROFILE])  # not .gitignore
    assert provenance.files == {n: md5((models / n).read_bytes()) for n in provenance.files}
    assert provenance.model_md5 == model_md5
    assert provenance.data_md5 == DATA_MD5  # as the MLflow run's data_md5 tag: no ".dir"
    assert provenance.git_commit == "abc"
    assert provenance.metrics == {"test_roc_auc": 0.93, "test_accuracy": 0.87, "test_rows": 16281}
    assert provenance.registered_version is None
    # load_bundle takes a models directory as it is.
    assert load_bundle(models) == bundle_from_models_dir(models)


def test_models_dir_without_profile_and_with_stale_metrics(tmp_path: Path) -> None:
    models = checkout(tmp_path, "a", profile=False)
    (tmp_path / "reports" / "metrics.json").write_text('{"test": {"roc_auc": 0.5}}')
    provenance = bundle_from_models_dir(models).version("champion").provenance
    assert sorted(provenance.files) == sorted(ARTIFACT_FILES)
    assert provenance.metrics == {}  # dvc.lock no longer vouches for them


def test_models_dir_must_match_its_lock(tmp_path: Path) -> None:
    models = checkout(tmp_path, "a")
    expected, actual = tamper(models / "feature_transform.json")
    with pytest.raises(BundleError) as error:
        bundle_from_models_dir(models)
    message = str(error.value)
    assert "feature_transform.json" in message and expected in message and actual in message


def test_models_dir_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nowhere")
    models = checkout(tmp_path / "c", "a")
    (models.parent / "dvc.lock").unlink()
    with pytest.raises(BundleError, match=r"dvc\.lock"):
        bundle_from_models_dir(models)
    models = checkout(tmp_path / "d", "a")
    contract = (models / "contract.json").read_bytes()
    (models / "contract.json").unlink()
    with pytest.raises(BundleError, match=r"contract\.json does not exist"):
        bundle_from_models_dir(models)
    lock = yaml.safe_load((models.parent / "dvc.lock").read_text())
    del lock["stages"]["featurize"]
    (models / "contract.json").write_bytes(contract)
    (models.parent / "dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.raises(BundleError, match=r"does not record models/feature_transform\.json"):
        bundle_from_models_dir(models, models.parent / "dvc.lock")


# ------------------------------------------------------------------------------ written bundles


def test_write_and_load_champion_and_challenger(tmp_path: Path) -> None:
    v3 = registered(checkout(tmp_path / "a", "a"), "3", "champion")
    v4 = registered(checkout(tmp_path / "b", "b", profile=False), "4", "candidate")
    dest = tmp_path / "bundles" / "current"
    bundle = write_bundle(dest, [v3, v4], champion="v3", challenger="v4")

    assert dest.is_symlink() and not os.readlink(dest).startswith("/")  # relocatable
    assert bundle.path == dest.resolve()
    assert bundle.roles == {"champion": "v3", "challenger": "v4"}
    for version, source in ((bundle.version("champion"), v3), (bundle.version("challenger"), v4)):
        assert version.provenance == source.provenance
        assert version.directory == bundle.path / version.id
        for name in version.provenance.files:
            assert version.file(name).read_bytes() == source.file(name).read_bytes()
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    assert manifest == {
        "format": 1,
        "champion": "v3",
        "challenger": "v4",
        "versions": {
            v: {"provenance_md5": md5((dest / v / PROVENANCE_FILE).read_bytes())}
            for v in ("v3", "v4")
        },
    }
    stored = json.loads((dest / "v4" / PROVENANCE_FILE).read_text())
    assert stored["aliases"] == ["candidate"] and stored["source"] == "models:/tabml-adult/4"
    assert load_bundle(dest) == bundle


@pytest.mark.parametrize("victim", ["model.txt", "contract.json", PROFILE])
def test_a_tampered_file_fails_the_load_naming_it(tmp_path: Path, victim: str) -> None:
    v3 = registered(checkout(tmp_path / "a", "a"), "3")
    dest = tmp_path / "bundle"
    write_bundle(dest, [v3], champion="v3")
    expected, actual = tamper(dest / "v3" / victim)
    with pytest.raises(BundleError) as error:
        load_bundle(dest)
    message = str(error.value)
    assert f"v3/{victim}" in message and expected in message and actual in message


def test_tampered_provenance_or_missing_files_fail(tmp_path: Path) -> None:
    v3 = registered(checkout(tmp_path / "a", "a"), "3")
    dest = tmp_path / "bundle"
    write_bundle(dest, [v3], champion="v3")
    provenance = dest / "v3" / PROVENANCE_FILE
    original = provenance.read_text()
    # Rewriting the provenance to vouch for a changed model breaks the manifest's md5.
    (dest / "v3" / MODEL_FILE).write_text("another model")
    document = json.loads(original)
    document["files"][MODEL_FILE] = document["model_md5"] = md5(b"another model")
    provenance.write_text(json.dumps(document))
    with pytest.raises(BundleError, match=f"v3/{PROVENANCE_FILE}: md5 .*/bundle.json records"):
        load_bundle(dest)
    provenance.write_text(original)
    (dest / "v3" / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match=f"v3/{MODEL_FILE} is missing"):
        load_bundle(dest)


def test_invalid_manifest_names_the_field(tmp_path: Path) -> None:
    v3 = registered(checkout(tmp_path / "a", "a"), "3")
    dest = tmp_path / "bundle"
    write_bundle(dest, [v3], champion="v3")
    manifest = json.loads((dest / MANIFEST_FILE).read_text())
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest | {"format": 2}))
    with pytest.raises(BundleError, match=r"bundle.json is invalid: format"):
        load_bundle(dest)
    (dest / MANIFEST_FILE).write_text(json.dumps(manifest | {"champion": "v9"}))
    with pytest.raises(BundleError, match="champion 'v9' is not one of the versions"):
        load_bundle(dest)


def test_roles_must_cover_exactly_the_versions(tmp_path: Path) -> None:
    v3 = registered(checkout(tmp_path / "a", "a"), "3")
    v4 = registered(checkout(tmp_path / "b", "b"), "4")
    dest = tmp_path / "bundle"
    with pytest.raises(BundleError, match="other than the champion"):
        write_bundle(dest, [v3, v4], champion="v3", challenger="v3")
    with pytest.raises(BundleError, match=r"\['v4'\] are neither champion nor challenger"):
        write_bundle(dest, [v3, v4], champion="v3")
    with pytest.raises(BundleError, match="repeat"):
        write_bundle(dest, [v3, v3], champion="v3")
    assert not dest.exists() and not list(tmp_path.glob(".bundle.gen-*"))


def test_replacing_keeps_the_old_bundle_until_the_new_one_is_complete(tmp_path: Path) -> None:
    a, b = checkout(tmp_path / "a", "a"), checkout(tmp_path / "b", "b")
    dest = tmp_path / "bundle"
    first = write_bundle(dest, [registered(a, "1")], champion="v1")
    second = write_bundle(dest, [registered(a, "1"), registered(b, "2")], "v2", "v1")
    assert load_bundle(dest).roles == {"champion": "v2", "challenger": "v1"}
    assert first.path.is_dir()  # kept: a service may still be loading it
    third = write_bundle(dest, [registered(b, "2")], champion="v2")
    generations = sorted(tmp_path.glob(".bundle.gen-*"))
    assert generations == sorted([second.path, third.path])  # the first one is pruned

    # A source that changed after it was described fails the write; the bundle is untouched.
    stale = registered(a, "1")
    (a / MODEL_FILE).write_text("retrained in place")
    with pytest.raises(BundleError, match="changed since it was described"):
        write_bundle(dest, [stale], champion="v1")
    assert load_bundle(dest) == third
    assert sorted(tmp_path.glob(".bundle.gen-*")) == generations


def test_a_bundle_directory_is_replaced_but_not_another_directory(tmp_path: Path) -> None:
    v1 = registered(checkout(tmp_path / "a", "a"), "1")
    built = write_bundle(tmp_path / "built", [v1], champion="v1")
    copied = tmp_path / "copied"
    shutil.copytree(built.path, copied)  # e.g. baked into an image as a plain directory
    assert load_bundle(copied).roles == {"champion": "v1"}
    write_bundle(copied, [v1], champion="v1")
    assert copied.is_symlink() and load_bundle(copied).roles == {"champion": "v1"}

    models = checkout(tmp_path / "c", "c")
    with pytest.raises(BundleError, match="not a bundle"):
        write_bundle(models, [v1], champion="v1")
    assert (models / MODEL_FILE).is_file()


def test_a_bundle_carries_its_route_and_a_route_needs_a_challenger(tmp_path: Path) -> None:
    v3 = registered(checkout(tmp_path / "a", "a"), "3")
    v4 = registered(checkout(tmp_path / "b", "b"), "4")
    dest = tmp_path / "bundle"
    bundle = write_bundle(dest, [v3, v4], "v3", "v4", route="canary:0.10")
    assert bundle.route == "canary:0.1"
    assert json.loads((dest / "bundle.json").read_text())["route"] == "canary:0.1"
    assert reroute_bundle(dest, "shadow").route == "shadow"
    assert load_bundle(dest).roles == {"champion": "v3", "challenger": "v4"}
    unrouted = reroute_bundle(dest, None)
    assert unrouted.route is None and "route" not in (dest / "bundle.json").read_text()
    with pytest.raises(BundleError, match=r"route canary:0\.5 needs a challenger"):
        write_bundle(tmp_path / "single", [v3], "v3", route="canary:0.5")
    with pytest.raises(BundleError, match="expected champion, canary"):
        reroute_bundle(dest, "blue-green")
    assert load_bundle(dest).route is None  # a refused rewrite leaves the bundle as it was


def test_a_bad_route_in_bundle_json_names_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    write_bundle(dest, [registered(checkout(tmp_path / "a", "a"), "3")], "v3")
    manifest = json.loads((dest / "bundle.json").read_text())
    (dest / "bundle.json").write_text(json.dumps({**manifest, "route": "canary:2"}))
    with pytest.raises(BundleError, match=r"bundle\.json is invalid: route: .*canary fraction"):
        load_bundle(dest)
    (dest / "bundle.json").write_text(json.dumps({**manifest, "route": "shadow"}))
    with pytest.raises(BundleError, match="route shadow needs a challenger"):
        load_bundle(dest)
