"""The kvstore on a real 3-member etcd cluster (Debian's etcd-server, cilia.testing.etcd): the
client's calls and failover, a watch surviving kill -9 of the member under it (resume from the
revision, no relist), a full resync after `etcdctl compact`, three allocators on three connections
racing over 300 label sets (also with the leader killed mid-run), a dead node's references
expiring with its lease and its identities collected (by a full pass, and from the survivors'
watches on refs/), garbage written with etcdctl logged and skipped (identities, objects).

Run under the lab lock: flock /tmp/cilia-lab.lock pytest tests/e2e/test_kvstore_etcd.py"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.api.errors import ApiError
from cilia.identity.labels import LabelSet
from cilia.kvstore.api import Cancel, Cmp, ErrorCallback, KvError, Put, WatchCallback, WatchEvent
from cilia.kvstore.etcd import EtcdClient
from cilia.kvstore.identities import ID_PREFIX, LABELS_PREFIX, REFS_PREFIX, EtcdIdentityAllocator
from cilia.kvstore.reflector import PrefixReflector
from cilia.kvstore.resources import EtcdStore
from cilia.kvstore.session import NodeSession
from cilia.lab.etcd import EtcdCluster
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.testing.etcd import running_etcd
from cilia.testing.wait import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EtcdCluster]:
    with running_etcd(3) as etcd:
        yield etcd


@pytest.fixture
def healthy(cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The cluster with every member running, before and after the test."""
    _restart_dead(cluster)
    yield cluster
    _restart_dead(cluster)


def _restart_dead(cluster: EtcdCluster) -> None:
    """Restart every killed member at once: one alone cannot answer without a quorum."""
    dead = [m.name for m in cluster.members if cluster.pid(m.name) is None]
    errors: list[Exception] = []

    def restart(name: str) -> None:
        try:
            cluster.restart(name)
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=restart, args=(name,)) for name in dead]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    cluster.wait_healthy()


def _ordered(cluster: EtcdCluster, first: str) -> list[str]:
    """The cluster's endpoints with member `first` first (the one a new client talks to)."""
    return [cluster.member(first).unix_endpoint] + [m.unix_endpoint for m in cluster.members if m.name != first]


def _etcdctl(cluster: EtcdCluster, *args: str) -> str:
    endpoints = ",".join(f"unix://{m.socket_file}" for m in cluster.members if cluster.pid(m.name) is not None)
    result = subprocess.run(["etcdctl", f"--endpoints={endpoints}", *args], capture_output=True, text=True,
                            timeout=30, check=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    return result.stdout


def _wipe(cluster: EtcdCluster) -> None:
    client = EtcdClient(cluster.unix_endpoints)
    try:
        client.delete_prefix("cilia/")
    finally:
        client.close()


class Events:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[WatchEvent] = []

    def __call__(self, event: WatchEvent) -> None:
        with self.lock:
            self.seen.append(event)

    def take(self) -> list[tuple[str, str, bytes]]:
        with self.lock:
            out = [(e.kind, e.key, e.value) for e in self.seen]
            self.seen = []
            return out


def test_client_calls_transactions_and_errors(healthy: EtcdCluster) -> None:
    _wipe(healthy)
    client = EtcdClient(healthy.unix_endpoints, timeout=3)
    try:
        revision = client.put("cilia/test/a", b"1")
        entry = client.get("cilia/test/a")
        assert entry is not None and entry.mod_revision == revision and entry.value == b"1"
        assert not client.create("cilia/test/a", b"2") and client.create("cilia/test/b", b"2")
        assert client.update_if("cilia/test/a", b"3", revision) and not client.update_if("cilia/test/a", b"4", revision)
        # a prefix compare with 0: true only while no key lives under the prefix
        assert client.txn([Cmp("cilia/test/none/", 0, prefix=True)], [Put("cilia/test/c", b"c")])
        assert not client.txn([Cmp("cilia/test/", 0, prefix=True)], [Put("cilia/test/d", b"d")])
        assert client.get("cilia/test/d") is None
        lease = client.grant_lease(5)
        client.put("cilia/test/leased", b"x", lease)
        assert client.keepalive(lease)
        client.revoke(lease)
        assert not client.keepalive(lease) and client.get("cilia/test/leased") is None
        with pytest.raises(KvError, match="lease not found"):
            client.put("cilia/test/e", b"e", lease)
        kvs, listed = client.list_prefix("cilia/test/")
        assert [kv.key for kv in kvs] == ["cilia/test/a", "cilia/test/b", "cilia/test/c"] and listed >= revision
        for i in range(23):
            client.put(f"cilia/test/page/{i:02d}", b"p")
        paged = EtcdClient(healthy.unix_endpoints, page_size=5)
        keys, paged_revision = paged.list_prefix("cilia/test/page/")
        paged.close()
        assert [kv.key for kv in keys] == [f"cilia/test/page/{i:02d}" for i in range(23)]
        assert paged_revision == client.list_prefix("cilia/test/")[1]
        status = client.status()
        assert status.reachable and status.leader_id and status.member_id and status.raft_index > 0
        assert 0 < status.raft_applied_index <= status.raft_index
    finally:
        client.close()
    nowhere = EtcdClient(["unix:/run/cilia/etcd/cilia-none/etcd.sock:1", "http://127.0.0.1:1"], timeout=2)
    start = time.monotonic()
    with pytest.raises(KvError) as caught:
        nowhere.get("cilia/x")
    assert time.monotonic() - start < 3
    assert "cilia-none/etcd.sock:1" in str(caught.value) and "http://127.0.0.1:1" in str(caught.value)
    assert not nowhere.status().reachable
    nowhere.close()


def test_watch_from_a_compacted_revision_reports_compaction(healthy: EtcdCluster) -> None:
    client = EtcdClient(healthy.unix_endpoints)
    try:
        first = client.put("cilia/test/w", b"1")
        last = client.put("cilia/test/w", b"2")
        client.compact(last)
        errors: list[Exception] = []
        client.watch_prefix("cilia/test/", first, lambda events, revision: None, errors.append)
        wait_for(lambda: errors, 10)
        assert "compacted" in str(errors[0]) and getattr(errors[0], "compact_revision", 0) == last
    finally:
        client.close()


def test_kill_9_of_the_member_under_a_watch_resumes_from_the_revision(healthy: EtcdCluster) -> None:
    _wipe(healthy)
    leader = healthy.leader()
    reader = EtcdClient(_ordered(healthy, leader), timeout=3)  # watches on the leader
    writer = EtcdClient(healthy.unix_endpoints, timeout=3)
    events = Events()
    reflector = PrefixReflector(reader, "cilia/test/", events, name="kill-test")
    written: dict[str, bytes] = {}
    uncertain: set[str] = set()  # keys whose last put failed: one cut by the kill may still be committed
    stop = threading.Event()

    def write() -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            key, value = f"cilia/test/{i % 50}", str(i).encode()
            try:
                writer.put(key, value)
                written[key] = value
                uncertain.discard(key)
            except KvError:
                uncertain.add(key)
                time.sleep(0.05)  # the election: the next put goes to a member with a leader
            time.sleep(0.01)
    thread = threading.Thread(target=write)
    try:
        reflector.start()
        assert reflector.wait_synced(10)
        thread.start()
        wait_for(lambda: len(written) >= 20, 10)
        assert reader.endpoint == healthy.member(leader).unix_endpoint
        healthy.kill(leader)
        wait_for(lambda: reflector.resumes >= 1, 20, message="the reflector never noticed the kill")
        time.sleep(1.0)  # writes go on against the new leader
        stop.set()
        thread.join(10)
        # what etcd holds is the truth the reflector must reach; it agrees with every put that
        # returned, and a failed put's key holds either its value or the one before
        stored = {kv.key: kv.value for kv in writer.list_prefix("cilia/test/")[0]}
        certain = set(written) | set(stored)
        certain -= uncertain
        assert {k: stored.get(k) for k in certain} == {k: written.get(k) for k in certain}
        wait_for(lambda: reflector.items() == stored, 20,
                 message=lambda: f"reflector differs in {set(stored.items()) ^ set(reflector.items().items())}")
        assert reflector.resyncs == 0  # resumed from its revision, never listed again
        assert reader.endpoint != healthy.member(leader).unix_endpoint
    finally:
        stop.set()
        reflector.stop()
        reader.close()
        writer.close()


class GatedKv(EtcdClient):
    """A real EtcdClient whose watches the test can cut (the reflector cut off while writes go on)."""

    def __init__(self, endpoints: list[str]) -> None:
        super().__init__(endpoints)
        self.closed_gate = False
        self._live: list[tuple[Cancel, ErrorCallback]] = []

    def watch_prefix(self, prefix: str, start_revision: int, on_events: WatchCallback,
                     on_error: ErrorCallback) -> Cancel:
        if self.closed_gate:
            raise KvError("gate closed by the test")
        cancel = super().watch_prefix(prefix, start_revision, on_events, on_error)
        self._live.append((cancel, on_error))
        return cancel

    @property
    def watching(self) -> bool:
        return bool(self._live)

    def cut(self) -> None:
        self.closed_gate = True
        live, self._live = self._live, []
        for cancel, on_error in live:
            cancel()
            on_error(KvError("cut by the test"))


def test_compaction_while_away_means_a_full_resync(healthy: EtcdCluster) -> None:
    _wipe(healthy)
    gated = GatedKv(healthy.unix_endpoints)
    writer = EtcdClient(healthy.unix_endpoints)
    for name in ("keep", "change", "gone"):
        writer.put(f"cilia/test/{name}", name.encode())
    events = Events()
    reflector = PrefixReflector(gated, "cilia/test/", events, name="compact-test")
    try:
        reflector.start()
        assert reflector.wait_synced(10)
        events.take()
        wait_for(lambda: gated.watching, 5)  # cut the watch itself, not a list before it
        gated.cut()
        writer.put("cilia/test/change", b"changed")
        writer.delete("cilia/test/gone")
        writer.put("cilia/test/new", b"new")
        revision = writer.put("cilia/test/other", b"x")
        _etcdctl(healthy, "compact", str(revision))
        wait_for(lambda: reflector.resumes >= 1, 10)
        gated.closed_gate = False
        wait_for(lambda: reflector.resyncs == 1, 20)
        assert reflector.items() == {"cilia/test/keep": b"keep", "cilia/test/change": b"changed",
                                     "cilia/test/new": b"new", "cilia/test/other": b"x"}
        assert sorted(events.take()) == [("delete", "cilia/test/gone", b"gone"),
                                         ("put", "cilia/test/change", b"changed"),
                                         ("put", "cilia/test/new", b"new"), ("put", "cilia/test/other", b"x")]
        writer.put("cilia/test/after", b"a")
        wait_for(lambda: reflector.get("cilia/test/after") == b"a", 10)
    finally:
        reflector.stop()
        gated.close()
        writer.close()


def _label_sets(count: int) -> list[LabelSet]:
    return [LabelSet.from_k8s({"app": f"app-{i}", "tier": f"t{i % 7}"}, f"ns-{i % 5}") for i in range(count)]


def _allocators(cluster: EtcdCluster, tmp_path: Path, ttl: int = 10, gc_delay: float | None = None,
                ) -> list[tuple[EtcdClient, NodeSession, EtcdIdentityAllocator]]:
    """Three allocators, each on its own member; the periodic full pass and (unless `gc_delay` is
    given) the watch-driven collection off, so a test sees what its own calls do."""
    nodes = []
    for i, member in enumerate(cluster.members):
        client = EtcdClient(_ordered(cluster, member.name), timeout=3)  # each node on its own member
        session = NodeSession(client, f"node-{i}", ttl_seconds=ttl)
        session.start()
        session.wait_lease(10)
        allocator = EtcdIdentityAllocator(client, f"node-{i}", session, tmp_path / f"node-{i}.json",
                                          gc_interval=3600, gc_delay=gc_delay)
        allocator.start()
        assert allocator.wait_synced(10)
        nodes.append((client, session, allocator))
    return nodes


def _close(nodes: list[tuple[EtcdClient, NodeSession, EtcdIdentityAllocator]]) -> None:
    for client, session, allocator in nodes:
        allocator.stop()
        session.close(revoke=True)
        client.close()


def _race(nodes: list[tuple[EtcdClient, NodeSession, EtcdIdentityAllocator]], sets: list[LabelSet],
          during: threading.Event | None = None) -> dict[str, dict[str, int]]:
    results: dict[str, dict[str, int]] = {}
    errors: list[str] = []
    barrier = threading.Barrier(len(nodes))

    def run(index: int, allocator: EtcdIdentityAllocator) -> None:
        order = list(sets)
        random.Random(index).shuffle(order)
        got: dict[str, int] = {}
        barrier.wait(10)
        for n, labels in enumerate(order):
            if during is not None and n == len(order) // 3:
                during.set()
            for _attempt in range(40):  # an allocation may fail while a new leader is elected
                try:
                    got[labels.key()] = allocator.allocate(labels).id
                    break
                except KvError as exc:
                    last = str(exc)
                    time.sleep(0.1)
            else:
                errors.append(f"node-{index}: {labels.key()}: {last}")
        results[f"node-{index}"] = got
    threads = [threading.Thread(target=run, args=(i, n[2])) for i, n in enumerate(nodes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert not errors, errors[:5]
    return results


def _check_agreement(cluster: EtcdCluster, results: dict[str, dict[str, int]], sets: list[LabelSet]) -> None:
    first = results["node-0"]
    assert len(first) == len(sets)
    assert all(r == first for r in results.values()), "the nodes disagree on numbers"
    assert len(set(first.values())) == len(sets), "two label sets share a number"
    client = EtcdClient(cluster.unix_endpoints)
    try:
        stored = {int(kv.key.removeprefix(ID_PREFIX)): ";".join(json.loads(kv.value)["labels"])
                  for kv in client.list_prefix(ID_PREFIX)[0]}
        assert stored == {number: key for key, number in first.items()}
        assert len(client.list_prefix(LABELS_PREFIX)[0]) == len(sets)
        refs = [kv.key for kv in client.list_prefix(REFS_PREFIX)[0]]
        assert len(refs) == 3 * len(sets)
    finally:
        client.close()


def test_three_allocators_race_over_300_label_sets(healthy: EtcdCluster, tmp_path: Path) -> None:
    _wipe(healthy)
    nodes = _allocators(healthy, tmp_path)
    sets = _label_sets(300)
    try:
        start = time.monotonic()
        results = _race(nodes, sets)
        elapsed = time.monotonic() - start
        _check_agreement(healthy, results, sets)
        print(f"3 allocators x {len(sets)} label sets: {elapsed:.2f} s")
        for _client, _session, allocator in nodes:  # every node's view has them all
            wait_for(lambda a=allocator: len([i for i in a.all() if not i.reserved]) == len(sets), 20)
    finally:
        _close(nodes)


def test_three_allocators_race_while_the_leader_is_killed(healthy: EtcdCluster, tmp_path: Path) -> None:
    _wipe(healthy)
    nodes = _allocators(healthy, tmp_path)
    sets = _label_sets(300)
    kill_now = threading.Event()
    leader = healthy.leader()

    def killer() -> None:
        if kill_now.wait(120):
            healthy.kill(leader)
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        results = _race(nodes, sets, during=kill_now)
        thread.join(10)
        assert healthy.pid(leader) is None  # it was killed mid-run
        _check_agreement(healthy, results, sets)
    finally:
        kill_now.set()
        _close(nodes)


def test_a_dead_nodes_references_expire_and_its_identities_are_collected(healthy: EtcdCluster,
                                                                       tmp_path: Path) -> None:
    _wipe(healthy)
    nodes = _allocators(healthy, tmp_path, ttl=3)
    (_, _, a), (_, dead_session, dead), _ = nodes
    try:
        shared = a.allocate(LabelSet.from_k8s({"app": "shared"}, "default")).id
        dead.allocate(LabelSet.from_k8s({"app": "shared"}, "default"))
        only_dead = dead.allocate(LabelSet.from_k8s({"app": "dead"}, "default")).id
        dead.stop()
        dead_session.close(revoke=False)  # dies: no revoke, no more keepalives
        start = time.monotonic()
        client = nodes[0][0]
        wait_for(lambda: not client.list_prefix(f"{REFS_PREFIX}{only_dead}/")[0], 10)
        expired_after = time.monotonic() - start
        print(f"dead node's references gone {expired_after:.1f} s after it stopped (TTL 3 s)")
        assert expired_after < 3 + 2  # within the lease time (+ etcd's expiry tick)
        assert client.get(f"{REFS_PREFIX}{shared}/node-1") is None
        assert a.collect_garbage() == 1
        assert client.get(f"{ID_PREFIX}{only_dead}") is None and client.get(f"{ID_PREFIX}{shared}") is not None
        wait_for(lambda: a.lookup_by_id(only_dead) is None, 10)
    finally:
        _close([nodes[0], nodes[2]])
        nodes[1][0].close()


def test_a_dead_nodes_identities_are_collected_from_the_refs_watch(healthy: EtcdCluster, tmp_path: Path) -> None:
    """The default collection: no full pass (its interval is an hour here), the survivors' watches on
    refs/ see the dead node's references expire and one of them collects what nobody references."""
    _wipe(healthy)
    nodes = _allocators(healthy, tmp_path, ttl=3, gc_delay=0.5)
    (client, _, a), (_, dead_session, dead), (_, _, c) = nodes
    try:
        shared = a.allocate(LabelSet.from_k8s({"app": "shared"}, "default")).id
        dead.allocate(LabelSet.from_k8s({"app": "shared"}, "default"))
        only_dead = {dead.allocate(LabelSet.from_k8s({"app": f"dead-{i}"}, "default")).id for i in range(5)}
        dead.stop()
        dead_session.close(revoke=False)  # dies: no revoke, no more keepalives
        start = time.monotonic()

        def ids() -> set[int]:
            return {int(e.key.removeprefix(ID_PREFIX)) for e in client.list_prefix(ID_PREFIX)[0]}
        wait_for(lambda: ids() == {shared}, 15)
        collected_after = time.monotonic() - start
        print(f"dead node's identities collected {collected_after:.1f} s after it stopped (TTL 3 s, delay 0.5-1 s)")
        assert collected_after < 3 + 2 + 1 + 1  # lease time + etcd's expiry tick + delay and jitter
        assert a.watched_collections + c.watched_collections == len(only_dead)
        assert [e.key for e in client.list_prefix(LABELS_PREFIX)[0]] == \
            [LABELS_PREFIX + LabelSet.from_k8s({"app": "shared"}, "default").key()]
        wait_for(lambda: all(a.lookup_by_id(n) is None and c.lookup_by_id(n) is None for n in only_dead), 10)
        assert a.lookup_by_id(shared) is not None
    finally:
        _close([nodes[0], nodes[2]])
        nodes[1][0].close()


def test_garbage_written_by_hand_is_logged_and_skipped(healthy: EtcdCluster, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    _wipe(healthy)
    web = LabelSet.from_k8s({"app": "web"}, "default")
    _etcdctl(healthy, "put", f"{ID_PREFIX}garbage", "not json")
    _etcdctl(healthy, "put", f"{ID_PREFIX}256", '{"labels": "k8s:app=web"}')
    _etcdctl(healthy, "put", f"{LABELS_PREFIX}{web.key()}", '{"id": 99999999}')
    _etcdctl(healthy, "put", f"{REFS_PREFIX}x/node-9", "{}")
    _etcdctl(healthy, "put", "cilia/resources/Pod/default/junk", "{not json")
    _etcdctl(healthy, "put", "cilia/resources/Pod", "{}")
    nodes = _allocators(healthy, tmp_path)
    store = EtcdStore(nodes[0][0], "node-0", tmp_path / "objects.db", KindRegistry(CORE_KINDS))
    try:
        assert store.wait_synced(10) and store.list("Pod") == []
        store.apply([_pod("web")])
        assert [p["metadata"]["name"] for p in store.list("Pod")] == ["web"]
        allocator = nodes[0][2]
        identity = allocator.allocate(web)
        assert identity.id != 256
        assert nodes[1][2].allocate(web).id == identity.id
        _etcdctl(healthy, "put", f"{ID_PREFIX}257x", "\x01\x02")
        wait_for(lambda: f"{ID_PREFIX}257x" in caplog.text, 10)
        allocator.collect_garbage()
        for key in (f"{ID_PREFIX}garbage", f"{ID_PREFIX}256", f"{LABELS_PREFIX}", f"{REFS_PREFIX}x/node-9",
                    "cilia/resources/Pod/default/junk", "cilia/resources/Pod:"):
            assert key in caplog.text, key
        assert [i.id for i in allocator.all() if not i.reserved] == [identity.id]
    finally:
        store.close()
        _close(nodes)


def _pod(name: str, namespace: str = "default", **labels: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels}}


def test_objects_and_identities_across_nodes_and_from_the_cache_with_etcd_down(healthy: EtcdCluster,
                                                                              tmp_path: Path) -> None:
    _wipe(healthy)
    kinds = KindRegistry(CORE_KINDS)
    client_a = EtcdClient(_ordered(healthy, healthy.members[0].name), timeout=2)
    client_b = EtcdClient(_ordered(healthy, healthy.members[1].name), timeout=2)
    a = EtcdStore(client_a, "a", tmp_path / "a.db", kinds)
    b = EtcdStore(client_b, "b", tmp_path / "b.db", kinds)
    session_b = NodeSession(client_b, "b", ttl_seconds=10)
    session_b.start()
    identities_b = EtcdIdentityAllocator(client_b, "b", session_b, tmp_path / "b-identities.json")
    identities_b.start()
    seen_b: list[tuple[str, str]] = []
    b.watch(lambda kind, obj, old: seen_b.append((kind, obj["metadata"]["name"])))
    again: EtcdStore | None = None
    identities_again: EtcdIdentityAllocator | None = None
    web_labels = LabelSet.from_k8s({"app": "web"}, "prod")
    try:
        assert a.wait_synced(10) and b.wait_synced(10)
        session_b.wait_lease(10)
        a.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}},
                 _pod("web", "prod", app="web"), _pod("db", "prod", app="db")])
        wait_for(lambda: len(seen_b) == 3, 10)
        assert b.get("Pod", "prod", "web") is not None
        web = identities_b.allocate(web_labels).id
        b.close()
        identities_b.stop()  # node b's agent stops; then all of etcd goes down; then b restarts
        for member in healthy.members:
            healthy.kill(member.name)
        client_again = EtcdClient(healthy.unix_endpoints, timeout=2)
        again = EtcdStore(client_again, "b", tmp_path / "b.db", kinds)
        assert {p["metadata"]["name"] for p in again.list("Pod", "prod")} == {"web", "db"}
        identities_again = EtcdIdentityAllocator(client_again, "b", session_b, tmp_path / "b-identities.json")
        identities_again.start()
        assert identities_again.allocate(web_labels).id == web  # the same number, from the cache
        start = time.monotonic()
        with pytest.raises(KvError):
            identities_again.allocate(LabelSet.from_k8s({"app": "never-seen"}, "prod"))
        assert time.monotonic() - start < 10
        start = time.monotonic()
        with pytest.raises(ApiError) as caught:
            a.apply([_pod("new", "prod")])
        assert caught.value.status == 503 and time.monotonic() - start < 10
        assert "cilia-etcd-t0" in caught.value.message  # names the endpoints it tried
        _restart_dead(healthy)
        assert again.wait_synced(20)
        a.apply([_pod("after", "prod")])
        wait_for(lambda: again is not None and again.get("Pod", "prod", "after") is not None, 20)
        # the reference taken while etcd was down is written once it answers
        wait_for(lambda: client_a.get(f"{REFS_PREFIX}{web}/b") is not None, 20)
    finally:
        a.close()
        if identities_again is not None:
            identities_again.stop()
        identities_b.stop()
        session_b.close(revoke=True)
        if again is not None:
            again.close()
            again.kv.close()
        client_a.close()
        client_b.close()
