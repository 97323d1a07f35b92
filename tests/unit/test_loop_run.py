"""The loop's own guarantees that need no pipeline: one loop at a time, commits that say why."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tabml.loop import run, triggers


def test_a_second_loop_exits_with_a_clear_message_while_the_first_holds_the_lock(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from tabml.loop.run import exclusive
                with exclusive(Path({str(lock)!r})):
                    print("held", flush=True)
                    sys.stdin.readline()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(run.LoopBusyError, match=rf"pid {holder.pid}\b"), run.exclusive(lock):
            pass
    finally:
        holder.communicate("\n", timeout=30)
    with run.exclusive(lock):  # released when the holder exits
        assert lock.read_text() == str(os.getpid())


def test_the_commit_message_names_every_trigger_with_its_evidence() -> None:
    fired = [
        triggers.Trigger("drift", True, "last 5000 predictions of v1: workclass PSI 3.2"),
        triggers.Trigger("accuracy", True, "realized accuracy of v1 0.81"),
    ]
    subject, _, body = run.commit_message(fired).partition("\n\n")
    assert subject == "Retrain (tabml-loop): drift, accuracy"
    assert "- drift: last 5000 predictions of v1: workclass PSI 3.2" in body
    assert "- accuracy: realized accuracy of v1 0.81" in body
