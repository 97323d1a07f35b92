"""The project's own failure type: what it expects and explains, as opposed to a bug.

Bad data, a bad configuration, a missing or corrupt artifact end a stage or a command with one
clear message naming the problem. Every other exception is a bug and keeps its traceback, so
`except TabmlError` (not `except ValueError`) is how callers tell the two apart.
"""

from __future__ import annotations


class TabmlError(Exception):
    """An expected, explained failure: the message says what is wrong and where."""
