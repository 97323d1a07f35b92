"""Shared stage plumbing: expected failures become one clear message and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tabml.config import ConfigError
from tabml.data import DataIntegrityError, FieldCountError

EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataIntegrityError,
    FieldCountError,
    FileNotFoundError,
    ValueError,
)


def run_stage(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except EXPECTED_ERRORS as exc:
        print(f"stage {name} failed: {exc}", file=sys.stderr)
        sys.exit(1)
