"""Trained checkouts on disk for bundle tests: artifact files and the dvc.lock that vouches
for them, in DVC's layout, without running the pipeline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from tabml.layout import ARTIFACT_FILES, CONTRACT_FILE

PROFILE = "reference_profile.json"
DATA_MD5 = "b2a5fe0c00af26cefe97f1ace151e772"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def checkout(root: Path, seed: str, *, profile: bool = True, contract: bytes | None = None) -> Path:
    """A trained checkout as the pipeline leaves it: models/, reports/metrics.json and a
    dvc.lock recording each output under the stage that writes it. The artifacts hold
    placeholder text (bundles only hash them) unless a real `contract` is given."""
    models = root / "models"
    models.mkdir(parents=True)
    contents = {name: f"{name} of model {seed}\n".encode() for name in ARTIFACT_FILES}
    if contract is not None:
        contents[CONTRACT_FILE] = contract
    if profile:
        contents[PROFILE] = f'{{"profile": "{seed}"}}\n'.encode()
    for name, data in contents.items():
        (models / name).write_bytes(data)
    (models / ".gitignore").write_text("/model.txt\n")  # in the directory, not in the lock
    metrics = json.dumps({"test": {"roc_auc": 0.93, "accuracy": 0.87, "rows": 16281}}).encode()
    (root / "reports").mkdir()
    (root / "reports" / "metrics.json").write_bytes(metrics)

    def outs(*names: str) -> list[dict[str, str]]:
        return [{"path": f"models/{n}", "md5": md5(contents[n]), "hash": "md5"} for n in names]

    stages = {
        "validate": {
            "deps": [{"path": "data", "md5": f"{DATA_MD5}.dir"}],
            "outs": outs("contract.json"),
        },
        "featurize": {"outs": outs("feature_transform.json")},
        "train": {"outs": outs("model.txt", "model_metadata.json")},
        "evaluate": {"outs": [{"path": "reports/metrics.json", "md5": md5(metrics)}]},
    }
    if profile:
        stages["profile"] = {"outs": outs(PROFILE)}
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))
    return models
