"""Typed service settings, read from the environment (prefix `TABML_`) by pydantic-settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """Everything the service can be told; each field is also an environment variable.

    Relative paths resolve against the working directory (the repository root, or `/app` in the
    image), matching the paths recorded in `dvc.lock`.
    """

    model_config = SettingsConfigDict(env_prefix="TABML_", extra="ignore", frozen=True)

    model_dir: Path = Field(Path("models"), description="directory with the trained artifacts")
    dvc_lock: Path = Field(Path("dvc.lock"), description="lock file holding the artifacts' md5")
    allow_md5_mismatch: bool = Field(
        False, description="serve artifacts whose md5 differs from dvc.lock (or with no dvc.lock)"
    )
    bundle: Path | None = Field(
        None,
        description="bundle to serve: its champion answers, its challenger (if any) is routed "
        "to by `route`; default: the models directory as a one-version bundle",
    )
    challenger: Path | None = Field(
        None,
        description="challenger (a models directory copied from another checkout, or a bundle "
        "whose champion is taken), overriding the bundle's",
    )
    challenger_dvc_lock: Path | None = Field(
        None, description="dvc.lock vouching for a challenger models directory (default: ../)"
    )
    route: str | None = Field(
        None,
        description="champion | canary:<fraction> (sticky by X-Routing-Key) | shadow; "
        "default: the bundle's route (bundle.json, followed on reload), else champion",
    )
    admin_token: SecretStr | None = Field(
        None, description="bearer token of POST /admin/reload; unset, the endpoint is off (404)"
    )
    metrics_file: Path | None = Field(
        Path("reports/metrics.json"), description="test metrics shown by /metadata (optional)"
    )
    max_batch: int = Field(10_000, ge=1, description="most records accepted in one request")
    max_explain_batch: int = Field(
        1_000,
        ge=1,
        description="most records explained in one request (?explain=true; TreeSHAP takes "
        "about 2 ms of CPU a record, 65x scoring it)",
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body")
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="decision threshold; default: the trained model's"
    )
    model_name: str | None = Field(None, description="default: the data contract's name")
    model_version: str | None = Field(
        None, description="default: the first 12 hex digits of the model file's md5"
    )
    git_commit: str | None = Field(
        None, description="commit that built the model; default: asked from git if available"
    )
    log_level: str = Field("INFO", description="level of the JSON logs")
    live_monitoring: bool = Field(
        True, description="drift and realized-metric windows on /metrics, and /feedback"
    )
    prediction_log_dir: Path | None = Field(
        None, description="directory for prediction log segments (default: no log)"
    )
    prediction_log_sample: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share of prediction requests recorded: logged and labellable on /feedback",
    )
    prediction_log_queue: int = Field(
        20_000,
        ge=1,
        description="most records waiting for the log writer (about 1 kB each); beyond it "
        "events are dropped and counted, requests never wait",
    )
    prediction_log_segment_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="a log segment is closed at about this size"
    )
    prediction_log_segment_seconds: float = Field(
        300.0, gt=0, description="and at the latest this many seconds after it was opened"
    )
    feedback_index_size: int = Field(
        500_000,
        ge=1,
        description="recent recorded predictions per worker that /feedback can label "
        "(19 bytes each)",
    )

    @field_validator(
        "bundle", "challenger", "challenger_dvc_lock", "route", "model_version", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """`TABML_BUNDLE=` (empty: how an image built without a bundle says so) is not set."""
        return None if value == "" else value

    @field_validator("route")
    @classmethod
    def _known_route(cls, value: str | None) -> str | None:
        from tabml.serving.traffic_split import parse_route

        return None if value is None else str(parse_route(value))

    @field_validator("admin_token")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> ServingSettings:
        if self.prediction_log_queue < self.max_batch:
            raise ValueError(
                f"prediction_log_queue ({self.prediction_log_queue}) is below max_batch "
                f"({self.max_batch}): every largest batch would be dropped from the log"
            )
        return self
