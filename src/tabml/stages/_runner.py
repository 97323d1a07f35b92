"""Shared stage plumbing: expected failures become one clear message and a non-zero exit.

Only the project's own `TabmlError`s are expected (bad data, configuration, artifacts); any
other exception is a bug and propagates with its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tabml.errors import TabmlError


def run_stage(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except TabmlError as exc:
        print(f"stage {name} failed: {exc}", file=sys.stderr)
        sys.exit(1)
