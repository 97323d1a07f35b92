"""The trained artifacts in memory, and the prediction path shared by every endpoint.

Request records are validated against the contract-generated schema, laid out as columns and
encoded by the *fitted* `tabml.features.FeatureTransform` (categories → the training codes by
dictionary, missing or never-seen categories → NaN), then scored by `tabml.model.predict_proba`
with one thread: the same objects and calls as offline evaluation, so probabilities are
bit-identical. No pandas anywhere on this path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError

from tabml.contract import DataContract
from tabml.explain import Explanations, RawAttribution
from tabml.features import FeatureTransform
from tabml.layout import (
    CONTRACT_FILE,
    METADATA_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    SERVING_FILES,
    TRANSFORM_FILE,
)
from tabml.model import ModelFileError, load_booster, predict_proba
from tabml.model_metadata import ModelMetadata
from tabml.monitoring import ReferenceProfile
from tabml.serving.examples import example_records
from tabml.serving.schemas import field_errors, record_dict, record_model

#: A validated request record: contract column → value (nullable columns may be absent).
Record = dict[str, Any]


class ArtifactError(ModelFileError):
    """An artifact under the model directory is missing, unreadable or inconsistent."""


class RequestRejected(Exception):
    """A request the service refuses, with the HTTP status and the body's `detail`."""

    def __init__(
        self, status: int, detail: list[dict[str, Any]] | str, error_count: int | None = None
    ) -> None:
        super().__init__(detail if isinstance(detail, str) else f"{error_count} error(s)")
        self.status = status
        self.detail = detail
        self.error_count = error_count


def _load_json_artifact(path: Path, loader: Any) -> Any:
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    try:
        return loader(path)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ArtifactError(f"artifact {path} is corrupt or invalid: {exc}") from None


@dataclass(frozen=True)
class TrainedModel:
    """Everything `models/` holds, loaded and cross-checked."""

    model_dir: Path
    contract: DataContract
    transform: FeatureTransform
    booster: Any  # lightgbm.Booster
    metadata: ModelMetadata
    profile: ReferenceProfile

    @classmethod
    def load(cls, model_dir: Path) -> TrainedModel:
        model_dir = Path(model_dir)
        contract = _load_json_artifact(model_dir / CONTRACT_FILE, DataContract.load)
        transform = _load_json_artifact(
            model_dir / TRANSFORM_FILE, lambda p: FeatureTransform.load(p, contract)
        )
        metadata = _load_json_artifact(model_dir / METADATA_FILE, ModelMetadata.load)
        profile = _load_json_artifact(model_dir / PROFILE_FILE, ReferenceProfile.load)
        booster = load_booster(model_dir / MODEL_FILE)
        if metadata.feature_names != transform.feature_names_:
            raise ArtifactError(
                f"{model_dir / METADATA_FILE}: feature names "
                f"{metadata.feature_names} differ from the feature transform's "
                f"{transform.feature_names_}"
            )
        if booster.feature_name() != transform.feature_names_:
            raise ArtifactError(
                f"{model_dir / MODEL_FILE}: model features "
                f"{booster.feature_name()} differ from the feature transform's "
                f"{transform.feature_names_}"
            )
        _check_profile(model_dir / PROFILE_FILE, profile, contract)
        return cls(model_dir, contract, transform, booster, metadata, profile)

    @property
    def files(self) -> list[Path]:
        return [self.model_dir / name for name in SERVING_FILES]


def _check_profile(path: Path, profile: ReferenceProfile, contract: DataContract) -> None:
    unknown = sorted(set(profile.features) - set(contract.feature_names))
    if unknown:
        raise ArtifactError(f"{path}: feature(s) {unknown} are not columns of the data contract")
    if profile.monitor is None:
        raise ArtifactError(
            f"{path} carries no monitor settings (window sizes, thresholds): rebuild it with "
            "the pipeline (`python src/train.py`), whose profile stage writes them"
        )


class Predictor:
    """Validate raw records and score them exactly as offline prediction does."""

    def __init__(
        self,
        model: TrainedModel,
        *,
        threshold: float | None = None,
        max_batch: int = 10_000,
        example: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.threshold = model.metadata.threshold if threshold is None else threshold
        self.max_batch = max_batch
        self.feature_names = model.contract.feature_names
        self.attribution = RawAttribution(model.transform.feature_names_)
        label = model.contract.label
        self.labels = (label.negative, label.positive)
        if example is None:
            example = example_records(model.contract)[0]
        self.Record = record_model(model.contract, example)
        record = record_dict(model.contract)
        self._one = TypeAdapter(record)
        self._many = TypeAdapter(
            Annotated[list[record], Field(min_length=1, max_length=max_batch)]  # type: ignore[valid-type]
        )

    # validation -------------------------------------------------------------------------

    def _check_size(self, exc: ValidationError) -> None:
        for error in exc.errors(include_url=False, include_input=False):
            if error["loc"] == () and error["type"] == "too_long":
                raise RequestRejected(
                    413,
                    f"batch of {error['ctx']['actual_length']} records exceeds the maximum "
                    f"of {self.max_batch} per request (TABML_MAX_BATCH)",
                ) from None
            if error["loc"] == () and error["type"] == "too_short":
                raise RequestRejected(422, "the batch is empty: send at least one record") from None

    def _rejected(self, exc: ValidationError, *, single_record: bool) -> RequestRejected:
        errors, count = field_errors(exc, single_record=single_record)
        if errors and errors[0]["type"] == "json_invalid":
            return RequestRejected(400, errors, count)
        return RequestRejected(422, errors, count)

    def parse_json(self, body: bytes) -> list[Record]:
        """One JSON record (object) or a batch (array of objects) → validated records."""
        start = body.lstrip()[:1]
        try:
            if start == b"{":
                return [self._one.validate_json(body)]
            if start == b"[":
                return self._many.validate_json(body)
        except ValidationError as exc:
            self._check_size(exc)
            raise self._rejected(exc, single_record=start == b"{") from None
        try:
            json.loads(body)
        except ValueError as exc:
            raise RequestRejected(
                400,
                [
                    {
                        "index": None,
                        "field": None,
                        "type": "json_invalid",
                        "message": f"Invalid JSON: {exc}",
                    }
                ],
                1,
            ) from None
        raise RequestRejected(
            422,
            [
                {
                    "index": None,
                    "field": None,
                    "type": "body_type",
                    "message": "the body must be a JSON object (one record) or an array of records",
                }
            ],
            1,
        )

    def parse_columns(self, columns: Mapping[str, Sequence[Any]], rows: int) -> list[Record]:
        """Column-oriented input (OIP tensors) → validated records, errors by row and field."""
        if rows > self.max_batch:
            raise RequestRejected(
                413,
                f"batch of {rows} records exceeds the maximum of "
                f"{self.max_batch} per request (TABML_MAX_BATCH)",
            )
        records = [{name: values[i] for name, values in columns.items()} for i in range(rows)]
        try:
            return self._many.validate_python(records)
        except ValidationError as exc:
            self._check_size(exc)
            raise self._rejected(exc, single_record=False) from None

    def validate_records(self, records: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Records validated by another version's schema, validated by this one's (a shadow
        challenger whose data contract differs). Raises RequestRejected."""
        try:
            return self._many.validate_python(list(records))
        except ValidationError as exc:
            self._check_size(exc)
            raise self._rejected(exc, single_record=False) from None

    # prediction -------------------------------------------------------------------------

    def encode(self, records: Sequence[Record]) -> np.ndarray:
        # an omitted (nullable) field is missing, like null
        columns = {name: [r.get(name) for r in records] for name in self.feature_names}
        return self.model.transform.transform(columns)

    def predict(self, records: Sequence[Record]) -> np.ndarray:
        """Probability of the positive class for each record, in order."""
        return predict_proba(self.model.booster, self.encode(records))

    def predict_explained(self, records: Sequence[Record]) -> tuple[np.ndarray, Explanations]:
        """`predict` (the same probabilities, bit for bit) and each record's TreeSHAP by raw
        input column (`tabml.explain`), from one encoding."""
        features = self.encode(records)
        booster = self.model.booster
        return predict_proba(booster, features), self.attribution.explain(booster, features)

    def label_of(self, probabilities: np.ndarray) -> list[str]:
        negative, positive = self.labels
        return [positive if p >= self.threshold else negative for p in probabilities.tolist()]
