"""EtcdStore on MemoryKv: an apply on one node reaches every node's watchers, validated as
LocalStore validates, resourceVersion is the key's revision, garbage under cilia/resources/ is
logged with its key and skipped, a restart with the store down serves the cached objects and
refuses writes with a 503."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.api.errors import ApiError
from cilia.kvstore.memory import MemoryKv
from cilia.kvstore.resources import PREFIX, EtcdStore, object_key
from cilia.resources import ResourceError
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.testing.wait import wait_for

KINDS = KindRegistry(CORE_KINDS)


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels}}


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []

    def __call__(self, event_type: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.events.append((event_type, obj["metadata"]["name"], obj["metadata"].get("resourceVersion")))


@pytest.fixture
def kv() -> Iterator[MemoryKv]:
    store = MemoryKv()
    yield store
    store.close()


def _store(kv: MemoryKv, tmp_path: Path, node: str) -> tuple[EtcdStore, Seen]:
    store = EtcdStore(kv, node, tmp_path / f"{node}.db", KINDS)
    seen = Seen()
    store.watch(seen)
    assert store.wait_synced(5)
    return store, seen


def test_apply_on_one_node_reaches_the_others(kv: MemoryKv, tmp_path: Path) -> None:
    a, seen_a = _store(kv, tmp_path, "a")
    b, seen_b = _store(kv, tmp_path, "b")
    try:
        outcomes = a.apply([ns("prod"), pod("web", "prod", app="web")])
        assert [o.action for o in outcomes] == ["created", "created"]
        # the applying node's watchers have run when apply returns (apply then --wait works)
        assert [e[:2] for e in seen_a.events] == [("ADDED", "prod"), ("ADDED", "web")]
        wait_for(lambda: len(seen_b.events) == 2, 5)
        web = b.get("Pod", "prod", "web")
        assert web is not None and web["metadata"]["labels"] == {"app": "web"}
        entry = kv.get(object_key("Pod", "prod", "web"))
        assert entry is not None and web["metadata"]["resourceVersion"] == str(entry.mod_revision)
        assert b"resourceVersion" not in entry.value
        assert kv.get(f"{PREFIX}Namespace/_/prod") is not None
        assert [o.action for o in b.apply([pod("web", "prod", app="web")])] == ["unchanged"]
        assert [o.action for o in b.apply([pod("web", "prod", app="web2")])] == ["configured"]
        wait_for(lambda: a.get("Pod", "prod", "web")["metadata"]["labels"] == {"app": "web2"}, 5)  # type: ignore[index]
        assert [o.action for o in a.delete([pod("web", "prod"), pod("nope", "prod")])] == ["deleted", "not-found"]
        wait_for(lambda: b.get("Pod", "prod", "web") is None, 5)
        assert seen_a.events[-1][:2] == ("DELETED", "web")
        assert [p["metadata"]["name"] for p in a.list("Namespace")] == ["prod"]
    finally:
        a.close()
        b.close()


def test_validation_as_local_store_and_a_bad_batch_writes_nothing(kv: MemoryKv, tmp_path: Path) -> None:
    a, _ = _store(kv, tmp_path, "a")
    try:
        with pytest.raises(ResourceError, match="field 'spek'"):
            a.apply([pod("ok"), {**pod("web"), "spek": {}}])
        with pytest.raises(ResourceError, match="namespace 'missing' does not exist"):
            a.apply([pod("web", "missing")])
        assert kv.list_prefix(PREFIX)[0] == []
    finally:
        a.close()


def test_garbage_is_logged_with_its_key_and_skipped(kv: MemoryKv, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    kv.put(f"{PREFIX}Pod/default", b"{}")  # no name segment
    kv.put(f"{PREFIX}Pod/default/junk", b"\xff not json")
    kv.put(f"{PREFIX}Pod/default/wrongplace", b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"other"}}')
    kv.put(f"{PREFIX}Secret/default/s", b'{"apiVersion":"v1","kind":"Secret","metadata":{"name":"s"}}')
    a, seen = _store(kv, tmp_path, "a")
    try:
        for key in ("Pod/default ", "Pod/default/junk", "Pod/default/wrongplace", "Secret/default/s"):
            assert f"{PREFIX}{key.strip()}" in caplog.text
        assert a.list("Pod") == [] and seen.events == []
        a.apply([pod("web")])
        kv.put(object_key("Pod", "default", "web"), b"[1, 2")  # a good object overwritten by garbage
        wait_for(lambda: a.get("Pod", "default", "web") is None, 5)
        assert seen.events[-1][:2] == ("DELETED", "web")
        # an apply replaces the garbage
        assert [o.action for o in a.apply([pod("web")])] == ["created"]
    finally:
        a.close()


def test_restart_with_the_store_down_keeps_the_objects_and_refuses_writes(kv: MemoryKv, tmp_path: Path) -> None:
    a, _ = _store(kv, tmp_path, "a")
    a.apply([ns("prod"), pod("web", "prod"), pod("db", "prod")])
    a.close()
    kv.set_down(True)
    again = EtcdStore(kv, "a", tmp_path / "a.db", KINDS)
    seen = Seen()
    again.watch(seen)
    try:
        assert not again.wait_synced(0.2)
        assert {p["metadata"]["name"] for p in again.list("Pod")} == {"web", "db"}
        with pytest.raises(ApiError) as caught:
            again.apply([pod("new", "prod")])
        assert caught.value.status == 503 and "unreachable" in caught.value.message
        with pytest.raises(ApiError):
            again.delete([pod("web", "prod")])
        kv.set_down(False)
        kv.delete(object_key("Pod", "prod", "db"))  # changed while this agent was away
        assert again.wait_synced(5)
        assert [e[:2] for e in seen.events] == [("DELETED", "db")]
        assert again.get("Pod", "prod", "web") is not None
    finally:
        again.close()
