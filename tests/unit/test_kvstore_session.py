"""NodeSession: one lease per node, refreshed; a lost lease is replaced and the owners told."""

from __future__ import annotations

import pytest

from cilia.kvstore.api import KvError
from cilia.kvstore.memory import ManualClock, MemoryKv
from cilia.kvstore.session import NodeSession


def test_grant_refresh_and_replace_a_lost_lease() -> None:
    clock = ManualClock()
    kv = MemoryKv(clock)
    session = NodeSession(kv, "n1", ttl_seconds=9)
    granted: list[int] = []
    session.on_new_lease(granted.append)
    with pytest.raises(KvError, match="no kvstore lease"):
        _ = session.lease
    session.step()
    first = session.lease
    assert granted == [first]
    kv.put("cilia/nodes/n1", b"{}", first)
    for _ in range(5):  # refreshed every 3 s, it outlives its TTL many times over
        clock.advance(3)
        session.step()
    assert session.lease == first and kv.get("cilia/nodes/n1") is not None
    clock.advance(10)  # the agent was stuck (or etcd away) longer than the TTL
    session.step()
    assert kv.get("cilia/nodes/n1") is None
    second = session.lease
    assert second != first and granted == [first, second]


def test_store_down_keeps_the_lease_until_it_expires_then_replaces_it() -> None:
    clock = ManualClock()
    kv = MemoryKv(clock)
    session = NodeSession(kv, "n1", ttl_seconds=9)
    session.step()
    first = session.lease
    kv.set_down(True)
    session.step()
    assert "unavailable" in session.last_error and session.lease == first
    clock.advance(20)
    kv.set_down(False)
    session.step()
    assert session.lease != first and session.last_error == ""


def test_a_failing_callback_does_not_stop_the_others() -> None:
    kv = MemoryKv()
    session = NodeSession(kv, "n1", ttl_seconds=5)
    seen: list[int] = []

    def broken(lease: int) -> None:
        raise RuntimeError("owner bug")
    session.on_new_lease(broken)
    session.on_new_lease(seen.append)
    session.step()
    assert seen == [session.lease]


def test_thread_grants_and_close_revokes() -> None:
    kv = MemoryKv()
    session = NodeSession(kv, "n1", ttl_seconds=6)
    session.start()
    lease = session.wait_lease(5)
    kv.put("k", b"v", lease)
    session.close(revoke=True)
    assert kv.get("k") is None and kv.lease_count == 0
    with pytest.raises(KvError):
        _ = session.lease
