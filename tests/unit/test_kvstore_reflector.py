"""PrefixReflector: list + watch, resume from the last revision after a broken watch (no list),
full resync with synthesized puts and deletes after a compaction, garbage passed through, a
handler's failure logged and survived, a seeded copy diffed on the first list; a property test
over random mixes of writes and faults."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cilia.kvstore.api import Cancel, ErrorCallback, KvError, WatchCallback, WatchEvent
from cilia.kvstore.memory import MemoryKv
from cilia.kvstore.reflector import PrefixReflector
from cilia.testing.wait import wait_for


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        with self.lock:
            self.events.append((event.kind, event.key, event.value))

    def take(self) -> list[tuple[str, str, bytes]]:
        with self.lock:
            events, self.events = self.events, []
            return events


class CountingKv(MemoryKv):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0
        self.block_watches = False  # new watches fail (the reflector is cut off but writes go on)

    def watch_prefix(self, prefix: str, start_revision: int, on_events: WatchCallback,
                     on_error: ErrorCallback) -> Cancel:
        if self.block_watches:
            raise KvError("watches blocked")
        return super().watch_prefix(prefix, start_revision, on_events, on_error)

    def list_prefix(self, prefix: str) -> tuple[list, int]:  # type: ignore[type-arg]
        self.lists += 1
        return super().list_prefix(prefix)


@pytest.fixture
def kv() -> Iterator[CountingKv]:
    store = CountingKv()
    yield store
    store.close()


def _reflector(kv: MemoryKv, recorder: Recorder, **kwargs: object) -> PrefixReflector:
    reflector = PrefixReflector(kv, "cilia/x/", recorder, min_backoff=0.01, max_backoff=0.05,
                                **kwargs)  # type: ignore[arg-type]
    reflector.start()
    assert reflector.wait_synced(5)
    return reflector


def test_lists_then_watches(kv: CountingKv) -> None:
    kv.put("cilia/x/a", b"1")
    kv.put("cilia/y/a", b"ignored")
    recorder = Recorder()
    reflector = _reflector(kv, recorder)
    try:
        kv.put("cilia/x/b", b"2")
        kv.put("cilia/x/a", b"1")  # same value: no event
        kv.delete("cilia/x/a")
        wait_for(lambda: len(recorder.events) >= 3, 5)
        kv.settle()
        assert recorder.take() == [("put", "cilia/x/a", b"1"), ("put", "cilia/x/b", b"2"),
                                   ("delete", "cilia/x/a", b"1")]
        assert reflector.items() == {"cilia/x/b": b"2"}
        assert reflector.revision == kv.revision
    finally:
        reflector.stop()


def test_resumes_from_the_last_revision_without_listing_again(kv: CountingKv) -> None:
    recorder = Recorder()
    reflector = _reflector(kv, recorder)
    try:
        kv.put("cilia/x/a", b"1")
        wait_for(lambda: reflector.get("cilia/x/a") == b"1", 5)
        kv.set_down(True)  # the member under the watch dies
        kv.set_down(False)
        kv.put("cilia/x/b", b"2")  # written while the reflector was away
        kv.delete("cilia/x/a")
        wait_for(lambda: reflector.items() == {"cilia/x/b": b"2"}, 5)
        assert kv.lists == 1 and reflector.resumes >= 1 and reflector.resyncs == 0
        assert recorder.take() == [("put", "cilia/x/a", b"1"), ("put", "cilia/x/b", b"2"),
                                   ("delete", "cilia/x/a", b"1")]
    finally:
        reflector.stop()


def test_compaction_while_away_means_a_full_resync_with_synthesized_events(kv: CountingKv) -> None:
    kv.put("cilia/x/keep", b"k")
    kv.put("cilia/x/change", b"old")
    kv.put("cilia/x/gone", b"g")
    recorder = Recorder()
    reflector = _reflector(kv, recorder)
    try:
        recorder.take()
        kv.block_watches = True
        kv.break_watches()
        kv.put("cilia/x/change", b"new")
        kv.delete("cilia/x/gone")
        kv.put("cilia/x/new", b"n")
        kv.compact()
        wait_for(lambda: reflector.resumes >= 1, 5)
        kv.block_watches = False
        wait_for(lambda: reflector.resyncs == 1, 5)
        assert reflector.items() == {"cilia/x/keep": b"k", "cilia/x/change": b"new", "cilia/x/new": b"n"}
        assert sorted(recorder.take()) == [("delete", "cilia/x/gone", b"g"), ("put", "cilia/x/change", b"new"),
                                           ("put", "cilia/x/new", b"n")]
        assert kv.lists == 2 and reflector.revision == kv.revision
        kv.put("cilia/x/after", b"a")  # and it watches again
        wait_for(lambda: reflector.get("cilia/x/after") == b"a", 5)
    finally:
        reflector.stop()


def test_garbage_passes_through_and_a_failing_handler_is_survived(kv: CountingKv,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def handler(event: WatchEvent) -> None:
        if event.value == b"\xff boom":
            raise ValueError("cannot decode")
        seen.append(event.key)
    reflector = PrefixReflector(kv, "cilia/x/", handler, min_backoff=0.01)
    reflector.start()
    try:
        assert reflector.wait_synced(5)
        kv.put("cilia/x/bad", b"\xff boom")
        kv.put("cilia/x/good", b"{}")
        wait_for(lambda: seen == ["cilia/x/good"], 5)
        assert reflector.get("cilia/x/bad") == b"\xff boom"
        assert "cilia/x/bad" in caplog.text
    finally:
        reflector.stop()


def test_seeded_copy_yields_only_what_changed_while_away(kv: CountingKv) -> None:
    kv.put("cilia/x/same", b"s")
    kv.put("cilia/x/changed", b"new")
    recorder = Recorder()
    reflector = _reflector(kv, recorder, initial={"cilia/x/same": b"s", "cilia/x/changed": b"old",
                                                  "cilia/x/deleted": b"d"})
    try:
        assert sorted(recorder.take()) == [("delete", "cilia/x/deleted", b"d"),
                                           ("put", "cilia/x/changed", b"new")]
    finally:
        reflector.stop()


def test_store_down_at_start_keeps_the_seed_and_syncs_later(kv: CountingKv) -> None:
    kv.set_down(True)
    recorder = Recorder()
    reflector = PrefixReflector(kv, "cilia/x/", recorder, initial={"cilia/x/a": b"1"},
                                min_backoff=0.01, max_backoff=0.05)
    reflector.start()
    try:
        assert not reflector.wait_synced(0.2)
        assert reflector.items() == {"cilia/x/a": b"1"} and "unavailable" in reflector.last_error
        kv.set_down(False)
        assert reflector.wait_synced(5)
        assert recorder.take() == [("delete", "cilia/x/a", b"1")]
    finally:
        reflector.stop()


ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 5), st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("delete"), st.integers(0, 5), st.just(b"")),
    st.tuples(st.sampled_from(["break", "compact", "block", "unblock"]), st.just(0), st.just(b"")),
), max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_property_the_copy_and_the_handler_end_equal_to_the_store(script: list[tuple[str, int, bytes]]) -> None:
    """Whatever mix of writes, broken watches, compactions and cut-offs happens, once the store is
    reachable the reflector's copy, and the state its handler built from the events alone, equal
    the store's contents."""
    kv = CountingKv()
    built: dict[str, bytes] = {}

    def handler(event: WatchEvent) -> None:
        if event.kind == "put":
            built[event.key] = event.value
        else:
            assert built.pop(event.key, None) is not None, f"delete of {event.key} never put"
    reflector = PrefixReflector(kv, "cilia/x/", handler, min_backoff=0.001, max_backoff=0.01)
    reflector.start()
    try:
        assert reflector.wait_synced(5)
        for op, n, value in script:
            if op == "put":
                kv.put(f"cilia/x/{n}", value)
            elif op == "delete":
                kv.delete(f"cilia/x/{n}")
            elif op == "break":
                kv.break_watches()
            elif op == "compact":
                kv.compact()
            else:
                kv.block_watches = op == "block"
        kv.block_watches = False
        expected = {entry.key: entry.value for entry in kv.list_prefix("cilia/x/")[0]}
        wait_for(lambda: reflector.items() == expected and reflector.revision >= kv.revision, 5,
                 message=lambda: f"copy {reflector.items()} != store {expected}")
        kv.settle()
        assert built == expected
    finally:
        reflector.stop()
        kv.close()


def test_without_values_it_keeps_fingerprints_and_still_skips_unchanged_puts(kv: CountingKv) -> None:
    kv.put("cilia/x/keep", b"k" * 200)
    kv.put("cilia/x/change", b"old")
    recorder = Recorder()
    reflector = _reflector(kv, recorder, keep_values=False)
    try:
        assert sorted(recorder.take()) == [("put", "cilia/x/change", b"old"), ("put", "cilia/x/keep", b"k" * 200)]
        held = reflector.items()
        assert set(held) == {"cilia/x/keep", "cilia/x/change"} and all(len(v) == 16 for v in held.values())
        kv.put("cilia/x/keep", b"k" * 200)  # same value: no event
        kv.put("cilia/x/change", b"new")
        wait_for(lambda: reflector.revision >= kv.revision, 5)
        assert recorder.take() == [("put", "cilia/x/change", b"new")]
        kv.block_watches = True  # a compaction while away: the resync diffs by fingerprint
        kv.break_watches()
        kv.delete("cilia/x/change")
        kv.put("cilia/x/keep", b"k" * 200)  # rewritten, unchanged (and the revision moves past the resume point)
        kv.compact()
        wait_for(lambda: reflector.resumes >= 1, 5)
        kv.block_watches = False
        wait_for(lambda: reflector.resyncs == 1, 5)
        events = recorder.take()
        assert [(kind, key) for kind, key, _ in events] == [("delete", "cilia/x/change")]
        assert set(reflector.items()) == {"cilia/x/keep"}
    finally:
        reflector.stop()


class SplitBatchKv(CountingKv):
    """A member whose event answers carry a header revision ahead of their events (etcd does so for a
    watcher catching up in batches), then dies before sending the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[int] = []
        self.callbacks: list[tuple[WatchCallback, ErrorCallback]] = []

    def watch_prefix(self, prefix: str, start_revision: int, on_events: WatchCallback,
                     on_error: ErrorCallback) -> Cancel:
        self.starts.append(start_revision)
        self.callbacks.append((on_events, on_error))
        return lambda: None


def test_a_header_ahead_of_its_events_is_not_resumed_from() -> None:
    kv = SplitBatchKv()
    recorder = Recorder()
    reflector = _reflector(kv, recorder)
    try:
        wait_for(lambda: len(kv.starts) == 1, 5)
        on_events, on_error = kv.callbacks[0]
        first = kv.starts[0]
        on_events([WatchEvent("put", "cilia/x/a", b"1", first)], first + 5)  # events first+1.. still to come
        on_error(KvError("the member died"))
        wait_for(lambda: len(kv.starts) == 2, 5)
        assert kv.starts[1] == first + 1  # from the last event it has, not from the header
        on_events, _ = kv.callbacks[1]
        on_events([], first + 9)  # a progress notification does vouch for its header
        wait_for(lambda: reflector.revision == first + 9, 5)
    finally:
        reflector.stop()
        kv.close()
