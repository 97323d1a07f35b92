"""Shadow scoring off the response path (`tabml.serving.shadow`), with stand-in versions."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from tabml.serving.shadow import ShadowJob, ShadowScorer


@dataclass(eq=False)
class Version:
    id: str
    fail: bool = False
    gate: threading.Event | None = None
    calls: list[int] = field(default_factory=list)

    def score(self, records: Sequence[Any]) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10)
        self.calls.append(len(records))
        if self.fail:
            raise ValueError("category mismatch")
        return np.array([float(r["x"]) / 10 for r in records])


@dataclass
class Recorder:
    scored: list[tuple[str, str, list[float]]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    failed: list[tuple[str, int]] = field(default_factory=list)

    def scorer(self, capacity: int = 1_000, **kwargs: Any) -> ShadowScorer:
        return ShadowScorer(
            lambda job, p, _: self.scored.append((job.request_id, job.version.id, p.tolist())),
            capacity=capacity,
            on_dropped=self.dropped.append,
            on_failed=lambda version, rows: self.failed.append((version, rows)),
            **kwargs,
        )


def job(version: Version, request_id: str, *xs: int, **kwargs: Any) -> ShadowJob:
    return ShadowJob(version, [{"x": x} for x in xs], request_id, time.time(), "champ", **kwargs)


def test_each_request_gets_its_own_scores_from_few_calls() -> None:
    recorder, challenger = Recorder(), Version("v2")
    scorer = recorder.scorer(max_rows_per_call=50)
    gate = threading.Event()
    challenger.gate = gate
    scorer.start()
    try:
        for i in range(100):
            assert scorer.submit(job(challenger, f"r{i}", i % 10, 1))
        gate.set()
        assert scorer.wait_idle()
    finally:
        scorer.stop()
    assert sorted(recorder.scored) == sorted(
        (f"r{i}", "v2", [(i % 10) / 10, 0.1]) for i in range(100)
    )
    assert sum(challenger.calls) == 200 and max(challenger.calls) <= 50
    assert len(challenger.calls) < 100  # requests were combined
    assert scorer.stats.scored == 200 and scorer.stats.submitted == 200


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    recorder, gate = Recorder(), threading.Event()
    challenger = Version("v2", gate=gate)
    scorer = recorder.scorer(capacity=10)
    scorer.start()
    try:
        assert scorer.submit(job(challenger, "first", 1))  # taken by the thread, which blocks
        deadline = time.monotonic() + 5
        while not scorer._busy and time.monotonic() < deadline:
            time.sleep(0.001)
        started = time.perf_counter()
        accepted = [scorer.submit(job(challenger, f"r{i}", 1, 2, 3)) for i in range(5)]
        assert time.perf_counter() - started < 0.05
        assert accepted == [True, True, True, False, False]  # 9 rows fit, 12 would not
        assert recorder.dropped == [3, 3] and scorer.stats.dropped == 6
        gate.set()
        assert scorer.wait_idle()
    finally:
        scorer.stop()
    assert {r for r, _, _ in recorder.scored} == {"first", "r0", "r1", "r2"}


def test_a_failing_challenger_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    recorder, broken = Recorder(), Version("v9", fail=True)
    scorer = recorder.scorer()
    scorer.start()
    try:
        for i in range(20):
            assert scorer.submit(job(broken, f"r{i}", 1, 2))
        assert scorer.wait_idle()
    finally:
        scorer.stop()
    assert recorder.scored == []
    assert sum(rows for _, rows in recorder.failed) == 40 == scorer.stats.failed
    errors = [r for r in caplog.records if r.name == "tabml.serving.shadow"]
    assert len(errors) == 1 and "v9" in errors[0].getMessage() and errors[0].exc_info


def test_one_bad_request_does_not_cost_the_others_their_scores() -> None:
    recorder = Recorder()

    @dataclass(eq=False)
    class Picky(Version):
        def score(self, records: Sequence[Any]) -> np.ndarray:
            if any(r["x"] < 0 for r in records):
                raise ValueError("negative")
            return super().score(records)

    picky = Picky("v2")
    gate = threading.Event()
    scorer = recorder.scorer()
    blocker = Version("v3", gate=gate)
    scorer.start()
    try:
        scorer.submit(job(blocker, "blocker", 1))
        time.sleep(0.05)
        for i, x in enumerate([1, -1, 2, 3]):
            scorer.submit(job(picky, f"r{i}", x))
        gate.set()
        assert scorer.wait_idle()
    finally:
        scorer.stop()
    assert sorted(r for r, v, _ in recorder.scored if v == "v2") == ["r0", "r2", "r3"]
    assert recorder.failed == [("v2", 1)]


def test_jobs_keep_the_version_they_were_submitted_for() -> None:
    recorder, old, new = Recorder(), Version("v1"), Version("v2")
    scorer = recorder.scorer()
    scorer.start()
    try:
        scorer.submit(job(old, "before", 1))
        scorer.submit(job(new, "after", 1))
        assert scorer.wait_idle()
    finally:
        scorer.stop()
    assert sorted((r, v) for r, v, _ in recorder.scored) == [("after", "v2"), ("before", "v1")]


def test_revalidation_by_the_challengers_schema() -> None:
    recorder, challenger = Recorder(), Version("v2")

    def revalidate(records: list[Any]) -> list[Any]:
        if any("x" not in r for r in records):
            raise ValueError("field required")
        return [{"x": r["x"] * 2} for r in records]

    scorer = recorder.scorer()
    scorer.start()
    try:
        scorer.submit(job(challenger, "ok", 1, 2, revalidate=revalidate))
        scorer.submit(ShadowJob(challenger, [{"y": 1}], "bad", 0.0, "champ", revalidate))
        assert scorer.wait_idle()
    finally:
        scorer.stop()
    assert recorder.scored == [("ok", "v2", [0.2, 0.4])]
    assert recorder.failed == [("v2", 1)]


def test_stop_scores_what_is_queued() -> None:
    recorder, challenger = Recorder(), Version("v2")
    scorer = recorder.scorer()
    scorer.start()
    for i in range(50):
        scorer.submit(job(challenger, f"r{i}", 1))
    scorer.stop()
    assert len(recorder.scored) == 50 and not scorer.running


def test_on_the_event_loop_in_slices_between_requests() -> None:
    import asyncio

    recorder, challenger = Recorder(), Version("v2")

    async def main() -> list[int]:
        scorer = recorder.scorer(capacity=10_000, max_rows_per_call=64)
        scorer.start(asyncio.get_running_loop())
        for i in range(300):
            scorer.submit(job(challenger, f"r{i}", 1, 2, 3, 4, 5))
        ticks = []  # the loop keeps turning while the backlog is worked off
        while scorer.stats.scored < 1_000:
            ticks.append(scorer.stats.scored)
            await asyncio.sleep(0)
        for i in range(300, 320):  # queued right before the stop: scored by it
            scorer.submit(job(challenger, f"r{i}", 1))
        scorer.stop()
        assert not scorer.running
        return ticks

    ticks = asyncio.run(main())
    assert len(recorder.scored) == 320 and sum(challenger.calls) == 1_520
    assert max(challenger.calls[:-1]) <= 64 and len(set(ticks)) > 5


def test_copies_of_large_requests_are_scored_off_the_loop() -> None:
    import asyncio

    recorder = Recorder()
    threads: list[str] = []

    @dataclass(eq=False)
    class Where(Version):
        def score(self, records: Sequence[Any]) -> np.ndarray:
            threads.append(threading.current_thread().name)
            return super().score(records)

    challenger = Where("v2")

    async def main() -> None:
        scorer = recorder.scorer(capacity=10_000)
        scorer.start(asyncio.get_running_loop())
        scorer.submit(job(challenger, "small", 1))
        scorer.submit(job(challenger, "large", *range(100)))
        while scorer.stats.scored < 101:
            await asyncio.sleep(0.005)
        scorer.stop()

    asyncio.run(main())
    assert sorted(threads) == ["MainThread", "tabml-shadow"]
    assert {r for r, _, _ in recorder.scored} == {"small", "large"}


def test_the_cpu_time_of_shadow_scoring_is_reported() -> None:
    """What shadow scoring costs the process, for tabml_background_cpu_seconds_total."""
    seconds: list[float] = []
    challenger = Version("v2")
    scorer = ShadowScorer(lambda *_: None, capacity=1_000, on_cpu=seconds.append)
    scorer.start()
    try:
        for i in range(200):
            assert scorer.submit(job(challenger, f"r{i}", 0, 5))
        assert scorer.wait_idle()
    finally:
        scorer.stop()
    assert sum(challenger.calls) == 400
    assert seconds and min(seconds) >= 0 and sum(seconds) > 0
