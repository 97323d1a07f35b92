"""Waiting for what a real process does in its own time (a log line, a reload, /ready in an
in-process app): poll a condition until it holds, and fail after a deadline naming what never
happened. Servers started in the background wait for their ready URL in `processes`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    timeout: float = 15.0,
    *,
    what: str = "condition",
    poll: float = 0.05,
) -> T:
    """`condition()`'s first truthy result, polled every `poll` seconds for `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not met within {timeout} s")
        time.sleep(poll)
    return result
