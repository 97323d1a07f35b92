"""A frozen copy of what the service serves, for tests and benchmarks.

models/ (the model artifacts, the reference profile and the model card), dvc.lock and the test
metrics are copied and checked against that dvc.lock, so a pipeline run elsewhere in the working
tree cannot swap the model half-way through.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

from tests.support.project import REPO_ROOT


def snapshot_serving_artifacts(dest: Path, source: Path = REPO_ROOT, attempts: int = 30) -> Path:
    """Copy and verify the artifacts into `dest`; retry while a pipeline run rewrites them."""
    from tabml.layout import MODEL_CARD_FILES, SERVING_FILES
    from tabml.serving.provenance import ArtifactIntegrityError, verify_artifacts

    error: Exception | None = None
    for _ in range(attempts):
        shutil.rmtree(dest, ignore_errors=True)
        (dest / "models").mkdir(parents=True)
        (dest / "reports").mkdir()
        try:
            for name in (*SERVING_FILES, *MODEL_CARD_FILES):
                shutil.copy2(source / "models" / name, dest / "models" / name)
            shutil.copy2(source / "dvc.lock", dest / "dvc.lock")
            with contextlib.suppress(FileNotFoundError):
                shutil.copy2(source / "reports" / "metrics.json", dest / "reports")
            verify_artifacts(
                [dest / "models" / n for n in (*SERVING_FILES, *MODEL_CARD_FILES)],
                dest / "dvc.lock",
                allow_mismatch=False,
            )
            return dest
        except (OSError, ArtifactIntegrityError) as exc:  # mid-run: try again shortly
            error = exc
            time.sleep(2)
    raise RuntimeError(f"models/ never matched dvc.lock (run `python src/train.py`): {error}")
