"""The regeneration queue with a fake work function: coalescing, bounded workers, revisions."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from cilia.policy.regeneration import RegenerationQueue


class Recorder:
    """Work that records (endpoint, snapshot) and can be held up by a gate."""

    def __init__(self, errors: dict[int, str] | None = None) -> None:
        self.calls: list[tuple[int, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = 0
        self.max_running = 0
        self.errors = errors or {}
        self._lock = threading.Lock()

    def __call__(self, endpoint_id: int, snapshot: str) -> str:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            assert self.gate.wait(10), "test gate never opened"
            with self._lock:
                self.calls.append((endpoint_id, snapshot))
            return self.errors.get(endpoint_id, "")
        finally:
            with self._lock:
                self.running -= 1


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.fixture
def work() -> Recorder:
    return Recorder()


@pytest.fixture
def queue(work: Recorder) -> Iterator[RegenerationQueue[str]]:
    q: RegenerationQueue[str] = RegenerationQueue(work, "s0", workers=2)
    q.start()
    yield q
    work.gate.set()
    q.stop()


def test_an_endpoint_queued_twice_is_worked_once_with_the_newest_inputs(work: Recorder) -> None:
    q: RegenerationQueue[str] = RegenerationQueue(work, "s0", workers=1)
    assert q.publish("s1", [1, 2]) == 1
    assert q.publish("s2", [2, 3]) == 2
    q.start()
    try:
        assert q.wait(2, timeout=5).reached
    finally:
        q.stop()
    assert sorted(work.calls) == [(1, "s2"), (2, "s2"), (3, "s2")]


def test_workers_are_bounded_and_an_endpoint_is_never_worked_twice_at_once(work: Recorder) -> None:
    q: RegenerationQueue[str] = RegenerationQueue(work, "s0", workers=3)
    q.start()
    try:
        work.gate.clear()
        q.publish("s1", range(1, 21))
        wait_until(lambda: work.running == 3)
        q.publish("s2", [1, 2, 3])  # queued again while being worked: once more, after
        time.sleep(0.05)
        assert work.running == 3
        work.gate.set()
        assert q.wait(2, timeout=5).reached
    finally:
        q.stop()
    assert work.max_running == 3
    assert len(work.calls) == 23
    for endpoint_id in (1, 2, 3):  # the re-queue ran after the first and saw the newest inputs
        assert [s for e, s in work.calls if e == endpoint_id][-1] == "s2"


def test_wait_blocks_until_the_revision_is_reached_and_reports_what_lags(queue: RegenerationQueue[str],
                                                                          work: Recorder) -> None:
    work.gate.clear()
    revision = queue.publish("s1", [7, 8])
    result = queue.wait(revision, timeout=0.1)
    assert not result.reached and result.pending == [7, 8] and result.current == revision
    work.gate.set()
    result = queue.wait(revision, timeout=5)
    assert result.reached and result.pending == [] and result.not_ready == {}


def test_unaffected_endpoints_count_as_reached_at_once(queue: RegenerationQueue[str], work: Recorder) -> None:
    queue.publish("s1", [1])
    assert queue.wait(1, timeout=5).reached
    before = len(work.calls)
    revision = queue.publish("s2", [])  # a change that affects nobody
    assert queue.wait(revision, timeout=0).reached
    assert len(work.calls) == before


def test_a_future_revision_is_not_reached(queue: RegenerationQueue[str]) -> None:
    result = queue.wait(5, timeout=0.05)
    assert not result.reached and result.current == 0


def test_a_failed_regeneration_is_reported_not_ready_until_it_succeeds() -> None:
    work = Recorder(errors={4: "failed closed: too big"})
    done: list[tuple[int, str]] = []
    q: RegenerationQueue[str] = RegenerationQueue(work, "s0", workers=1, on_done=lambda i, e: done.append((i, e)))
    q.start()
    try:
        revision = q.publish("s1", [3, 4])
        result = q.wait(revision, timeout=5)
        assert result.reached and result.not_ready == {4: "failed closed: too big"}
        work.errors.clear()
        revision = q.publish("s2", [4])
        assert q.wait(revision, timeout=5).not_ready == {}
    finally:
        q.stop()
    assert sorted(done) == [(3, ""), (4, ""), (4, "failed closed: too big")]


def test_a_crashing_work_function_does_not_kill_the_worker() -> None:
    def work(endpoint_id: int, _snapshot: str) -> str:
        if endpoint_id == 1:
            raise RuntimeError("boom")
        return ""

    q: RegenerationQueue[str] = RegenerationQueue(work, "s0", workers=1)
    q.start()
    try:
        result = q.wait(q.publish("s1", [1, 2]), timeout=5)
    finally:
        q.stop()
    assert result.reached and "boom" in result.not_ready[1] and 2 not in result.not_ready


def test_queued_and_done_hooks_follow_the_queue(work: Recorder) -> None:
    events: list[tuple[str, int]] = []
    q: RegenerationQueue[str] = RegenerationQueue(
        work, "s0", workers=1, on_queued=lambda ids: events.extend(("queued", i) for i in ids),
        on_done=lambda i, _e: events.append(("done", i)))
    work.gate.clear()
    q.start()
    try:
        q.publish("s1", [1])
        wait_until(lambda: work.running == 1)
        q.publish("s2", [1])  # in flight: not "done" after the first run, only after the second
        work.gate.set()
        assert q.wait(2, timeout=5).reached
    finally:
        q.stop()
    assert events == [("queued", 1), ("done", 1)]
    assert [s for _e, s in work.calls] == ["s1", "s2"]


def test_run_now_works_in_the_callers_thread_after_a_busy_worker(queue: RegenerationQueue[str],
                                                                 work: Recorder) -> None:
    work.gate.clear()
    queue.publish("s1", [5])
    wait_until(lambda: work.running == 1)
    results: list[str] = []
    caller = threading.Thread(target=lambda: results.append(queue.run_now(5)))
    caller.start()
    time.sleep(0.05)
    assert work.running == 1 and not results  # waits for the worker, never two at once
    work.gate.set()
    caller.join(5)
    assert results == [""] and work.max_running == 1
    assert [e for e, _s in work.calls] == [5, 5]


def test_forget_drops_a_queued_endpoint(work: Recorder) -> None:
    q: RegenerationQueue[str] = RegenerationQueue(work, "s0", workers=1)
    revision = q.publish("s1", [1, 2])
    q.forget(1)
    q.start()
    try:
        assert q.wait(revision, timeout=5).reached
    finally:
        q.stop()
    assert [e for e, _s in work.calls] == [2]


def test_when_reached_runs_once_every_endpoint_reflects_the_revision(queue: RegenerationQueue[str],
                                                                     work: Recorder) -> None:
    work.gate.clear()
    fired = threading.Event()
    revision = queue.publish("s1", [1, 2])
    queue.when_reached(revision, fired.set)
    assert not fired.wait(0.05)
    work.gate.set()
    assert fired.wait(5)
    later = threading.Event()
    queue.when_reached(revision, later.set)  # already reached: at once
    assert later.is_set()


def test_synchronous_mode_works_everything_before_publish_returns(work: Recorder) -> None:
    q: RegenerationQueue[str] = RegenerationQueue(work, "s0", workers=0)
    assert q.synchronous
    revision = q.publish("s1", [1, 2, 3])
    assert sorted(work.calls) == [(1, "s1"), (2, "s1"), (3, "s1")]
    assert q.wait(revision, timeout=0).reached
    assert threading.active_count() >= 1  # no worker threads were needed


def test_wait_can_look_at_some_endpoints_only(queue: RegenerationQueue[str], work: Recorder) -> None:
    work.gate.clear()
    revision = queue.publish("s1", [1, 2])
    wait_until(lambda: work.running >= 1)
    assert not queue.wait(revision, 0.05, only=[1]).reached
    assert queue.wait(revision, 0, only=[3]).reached  # nobody queued endpoint 3
    work.gate.set()
    assert queue.wait(revision, 5, only=[1]).reached
