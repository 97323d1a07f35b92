"""What serving and tracking need to know about a trained model, saved next to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tabml.atomic import write_text_atomic


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    feature_names: list[str]
    categorical_features: list[str]
    best_iteration: int
    threshold: float
    lightgbm_version: str
    params: dict[str, Any]

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.model_dump(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelMetadata:
        return cls.model_validate_json(Path(path).read_text())
