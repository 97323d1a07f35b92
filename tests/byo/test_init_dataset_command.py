"""`tabml init-dataset` as a user runs it, in a real git + DVC repository: what it writes for a
good CSV, and that a refused CSV exits non-zero and writes nothing at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.support.project import command_env, run

from tabml.config import DatasetConfig
from tabml.data import dir_md5, file_md5, pinned_dir_md5

#: The console script pyproject.toml declares, as a user runs it.
TABML = Path(sys.executable).parent / "tabml"
GOOD = "size,colour,y\n" + "".join(
    f"{i % 7 + 1.5},{['red', 'blue'][i % 2]},{['no', 'yes'][i % 3 == 0]}\n" for i in range(40)
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    run(["git", "init", "--quiet"], cwd=root)
    run([sys.executable, "-m", "dvc", "init", "--quiet"], cwd=root)
    return root


def init_dataset(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TABML), "init-dataset", *args],
        cwd=repo,
        env=command_env(),
        capture_output=True,
        text=True,
        check=False,
    )


def tree(root: Path) -> dict[str, str]:
    """Every file of the repository but git's and DVC's internals, with its md5."""
    return {
        p.relative_to(root).as_posix(): file_md5(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in {".git", ".dvc"}
    }


def test_writes_the_contract_copies_and_tracks_the_data(repo, tmp_path):
    csv = tmp_path / "shop.csv"
    csv.write_text(GOOD)
    result = init_dataset(repo, str(csv), "--label", "y", "--name", "shop")
    assert result.returncode == 0, result.stderr
    config = DatasetConfig.model_validate(
        yaml.safe_load((repo / "conf/dataset/shop.yaml").read_text())
    )
    assert (config.name, config.data_dir, config.test_holdout) == ("shop", "datasets/shop", 0.2)
    assert config.reference_profile == "reference/shop/profile.json"
    assert (config.label.positive, config.label.negative) == ("yes", "no")
    assert [(c.name, c.type) for c in config.columns] == [("size", "float"), ("colour", "category")]
    assert config.files["train"].md5 == file_md5(csv) and config.files["train"].skip_rows == 1
    copied = repo / "datasets/shop/shop.csv"
    assert copied.read_bytes() == csv.read_bytes()
    assert pinned_dir_md5(repo / "datasets/shop.dvc") == dir_md5(repo / "datasets/shop")
    assert "/shop" in (repo / "datasets/.gitignore").read_text().split()
    assert (
        "python src/train.py dataset=shop   # then commit dvc.lock, params.yaml and reference/shop/"
        in result.stdout
    )
    assert "label y: positive 'yes' (14 rows), negative 'no' (26 rows)" in result.stdout
    assert "size: numeric with only" not in result.stdout  # 7 distinct values: not a finding


def test_an_existing_name_is_refused(repo, tmp_path):
    csv = tmp_path / "shop.csv"
    csv.write_text(GOOD)
    assert init_dataset(repo, str(csv), "--label", "y", "--name", "shop").returncode == 0
    before = tree(repo)
    again = init_dataset(repo, str(csv), "--label", "y", "--name", "shop")
    assert again.returncode == 1
    assert "conf/dataset/shop.yaml exists: dataset 'shop' is already defined" in again.stderr
    assert tree(repo) == before


@pytest.mark.parametrize(
    ("payload", "label", "message"),
    [
        (b"a,b\n1,2\n3,4\n", "y", "no label column 'y'"),
        (b"a,y\n1,0\n2,0\n", "y", "label column 'y' has only the class '0'"),
        (b"a,y\n1,r\n2,g\n3,b\n", "y", "label column 'y' has 3 classes"),
        (b"", "y", "empty file"),
        (b"a,y\n1,0\n2,1\nthree,0\n4,1\n", "y", "column 'a' mixes numbers and text"),
        (b"a,c,y\n1,x,0\n2,\xff,1\n", "y", "line 3, column 'c': not UTF-8 (byte 0xff"),
    ],
    ids=["no-label", "one-class", "three-classes", "empty", "mixed-types", "not-utf8"],
)
def test_a_refused_csv_exits_non_zero_and_writes_nothing(repo, tmp_path, payload, label, message):
    csv = tmp_path / "bad.csv"
    csv.write_bytes(payload)
    before = tree(repo)
    result = init_dataset(repo, str(csv), "--label", label, "--name", "bad")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert tree(repo) == before


def test_outside_a_dvc_repository_nothing_is_written(tmp_path):
    csv = tmp_path / "shop.csv"
    csv.write_text(GOOD)
    plain = tmp_path / "plain"
    plain.mkdir()
    result = init_dataset(plain, str(csv), "--label", "y", "--name", "shop")
    assert result.returncode == 1 and "is not a DVC repository" in result.stderr
    assert list(plain.iterdir()) == []


def test_a_test_file_is_the_test_set_and_widens_the_contract(repo, tmp_path):
    train, test = tmp_path / "shop.csv", tmp_path / "shop_test.csv"
    train.write_text(GOOD)
    test.write_text("size,colour,y\n20.5,green,yes\n1.5,red,no\n")
    result = init_dataset(repo, str(train), "--test", str(test), "--label", "y", "--name", "shop")
    assert result.returncode == 0, result.stderr
    config = DatasetConfig.model_validate(
        yaml.safe_load((repo / "conf/dataset/shop.yaml").read_text())
    )
    assert config.test_holdout is None
    assert config.files["test"].name == "shop_test.csv"
    assert config.files["test"].md5 == file_md5(test)
    assert config.column("colour").categories == ["blue", "green", "red"]
    assert config.column("size").max > 20.5
    assert sorted(p.name for p in (repo / "datasets/shop").iterdir()) == [
        "shop.csv",
        "shop_test.csv",
    ]
    assert "test: test set shop_test.csv" in result.stdout


def test_a_test_file_with_another_header_is_refused(repo, tmp_path):
    train, test = tmp_path / "shop.csv", tmp_path / "shop_test.csv"
    train.write_text(GOOD)
    test.write_text("size,y\n2.5,yes\n")
    before = tree(repo)
    result = init_dataset(repo, str(train), "--test", str(test), "--label", "y", "--name", "shop")
    assert result.returncode == 1
    assert "shop_test.csv line 1: columns ['size', 'y'] differ from" in result.stderr
    assert tree(repo) == before


def test_a_failed_dvc_add_is_rolled_back(repo, tmp_path):
    """DVC refuses to track datasets/NAME inside another stage's output: the copied data, the
    staging directory and datasets/ itself are removed again, and no YAML is written."""
    (repo / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: mkdir -p datasets\n    outs:\n      - datasets\n"
    )
    csv = tmp_path / "shop.csv"
    csv.write_text(GOOD)
    before = tree(repo)
    result = init_dataset(repo, str(csv), "--label", "y", "--name", "shop")
    assert result.returncode == 1
    assert "error: dvc add datasets/shop failed:" in result.stderr, result.stderr
    assert tree(repo) == before
    assert not (repo / "datasets").exists()


def test_the_pipelines_own_validation_runs_before_anything_is_written(repo, tmp_path):
    """A header row repeated among the data (files concatenated with their headers) passes the
    inference here (its values are an ordinary level and an ordinary label value) but not the
    validate stage's raw-line check, which init-dataset runs before writing."""
    csv = tmp_path / "shop.csv"
    csv.write_text(
        "colour,shape,yes\nred,round,no\nblue,flat,yes\ncolour,shape,yes\nred,flat,yes\n"
    )
    before = tree(repo)
    result = init_dataset(repo, str(csv), "--label", "yes", "--name", "shop")
    assert result.returncode == 1
    assert "the inferred contract fails the pipeline's own validation of" in result.stderr
    assert "1 header row(s) (the column names) among the data, line 4" in result.stderr
    assert tree(repo) == before
