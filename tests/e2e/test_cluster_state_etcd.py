"""The cluster state on a real etcd (cilia.testing.etcd): three nodes' runtimes (node registry,
ipcache, controller) over EtcdClient with datapaths that record the views they are given.
A node's endpoints reach the others; a node that dies (its lease not refreshed, not revoked)
disappears from every other node within its lease time; garbage written by hand is skipped;
pod CIDR claims are distinct and kept; a leader killed with kill -9 and all of etcd down are
ridden out, converging without a restart."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cilia.agent.cluster import EtcdCluster as AgentEtcd
from cilia.agent.config import parse_config
from cilia.cluster import codec
from cilia.cluster.model import ClusterView, NodeRecord, RemoteEndpoint, RoutingMode
from cilia.cluster.podcidr import PodCidrClaimer
from cilia.cluster.runtime import ClusterRuntime
from cilia.endpoint.record import EndpointRecord
from cilia.kvstore.etcd import EtcdClient
from cilia.kvstore.session import NodeSession
from cilia.lab.etcd import EtcdCluster
from cilia.testing.etcd import running_etcd
from cilia.testing.wait import wait_for

net = ipaddress.ip_network
TTL = 3


class RecordingDatapath:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.views: list[tuple[float, ClusterView]] = []

    def sync_cluster(self, view: ClusterView) -> int:
        with self._lock:
            self.views.append((time.monotonic(), view))
        return 0

    def last(self) -> ClusterView | None:
        with self._lock:
            return self.views[-1][1] if self.views else None


def endpoint(eid: int, v4: str, identity: int) -> EndpointRecord:
    return EndpointRecord(id=eid, container_id=f"c{eid}", ifname="eth0", netns="/run/netns/x", host_ifname="lxc",
                          host_ifindex=1, mac="", host_mac="", ipv4=v4, ipv6=None, gateway_ipv4=None,
                          gateway_ipv6=None, pod_namespace="default", pod_name=f"p{eid}", identity=identity,
                          identity_labels=[], created_at=0.0)


class Node:
    def __init__(self, endpoints: list[str], name: str, index: int) -> None:
        self.kv = EtcdClient(endpoints, timeout=2.0)
        self.endpoints: list[EndpointRecord] = []
        self.datapath = RecordingDatapath()
        record = NodeRecord(name, ipaddress.IPv4Address(f"192.0.2.{index}"), None, (net(f"10.200.{index}.0/24"),),
                            RoutingMode.TUNNEL)
        self.runtime = ClusterRuntime(kv=self.kv, session=NodeSession(self.kv, name, TTL), local=record,
                                      datapath=self.datapath, local_endpoints=lambda: list(self.endpoints),
                                      debounce=0.02, retry_interval=0.2)
        self.runtime.start()

    def add(self, record: EndpointRecord) -> None:
        self.endpoints.append(record)
        self.runtime.endpoints_changed()

    def remote(self) -> dict[ipaddress.IPv4Network | ipaddress.IPv6Network, RemoteEndpoint]:
        view = self.datapath.last()
        return dict(view.remote_endpoints) if view else {}

    def names(self) -> set[str]:
        view = self.datapath.last()
        return {n.name for n in view.nodes} if view else set()

    def kill(self) -> None:
        """As kill -9 would: the threads stop, the lease is neither refreshed nor revoked."""
        self.runtime.controller.stop()
        self.runtime.node_reflector.stop()
        self.runtime.ipcache_reflector.stop()
        self.runtime.session.close(revoke=False)
        self.kv.close()

    def stop(self) -> None:
        self.runtime.stop()
        self.kv.close()


@contextmanager
def nodes(etcd: EtcdCluster, count: int) -> Iterator[list[Node]]:
    started = [Node(etcd.unix_endpoints, f"node-{i}", i) for i in range(1, count + 1)]
    try:
        yield started
    finally:
        for node in started:
            node.stop()


def etcdctl(etcd: EtcdCluster, *args: str) -> None:
    member = etcd.members[0]
    subprocess.run(["etcdctl", f"--endpoints=unix://{member.socket_file}", *args], check=True,
                   capture_output=True, timeout=10)


def test_endpoints_spread_and_a_dead_node_disappears_within_its_lease(caplog: pytest.LogCaptureFixture) -> None:
    with running_etcd(1) as etcd, nodes(etcd, 3) as (a, b, c):
        wait_for(lambda: c.names() == {"node-1", "node-2"} and a.names() == {"node-2", "node-3"}, 15,
                 message="every node sees the two others")
        etcdctl(etcd, "put", "cilia/ipcache/garbage", "not json")
        etcdctl(etcd, "put", "cilia/nodes/evil", "{}")
        added = time.monotonic()
        a.add(endpoint(1, "10.200.1.10", 5000))
        expected = RemoteEndpoint(5000, ipaddress.IPv4Address("192.0.2.1"))
        wait_for(lambda: c.remote().get(net("10.200.1.10/32")) == expected, 10, message="a's pod in c's view")
        wait_for(lambda: b.remote().get(net("10.200.1.10/32")) == expected, 10, message="a's pod in b's view")
        print(f"pod on a -> c's view in {time.monotonic() - added:.3f} s")
        assert "cilia/ipcache/garbage" in caplog.text and "cilia/nodes/evil" in caplog.text
        a.kill()
        killed = time.monotonic()
        wait_for(lambda: not c.remote() and c.names() == {"node-2"} and b.names() == {"node-3"}, TTL + 5,
                 interval=0.05, message="the dead node gone from the others")
        gone = time.monotonic() - killed
        print(f"dead node gone from the others {gone:.2f} s after it stopped (lease TTL {TTL} s)")
        assert gone <= TTL + 2  # etcd checks lease expiry about every 500 ms


def test_pod_cidr_claims_are_distinct_and_kept(tmp_path: Path) -> None:
    with running_etcd(1) as etcd:
        results: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
        clients = {f"n{i}": EtcdClient(etcd.unix_endpoints) for i in range(3)}

        pool = net("10.200.0.0/22")

        def claim(name: str) -> None:
            results[name] = PodCidrClaimer(clients[name], name, tmp_path / f"{name}.json").claim(pool, 24)

        try:
            threads = [threading.Thread(target=claim, args=(name,)) for name in clients]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert len(set(results.values())) == 3
            for name, client in clients.items():  # a restart keeps the claim
                again = PodCidrClaimer(client, name, tmp_path / "fresh" / f"{name}.json").claim(pool, 24)
                assert again == results[name]
            claims = clients["n0"].list_prefix("cilia/podcidrs/")[0]
            owners = {codec.decode_claim(e.key, e.value) for e in claims}
            assert owners == {(cidr, name) for name, cidr in results.items()}
        finally:
            for client in clients.values():
                client.close()


def test_leader_killed_mid_operation() -> None:
    with running_etcd(3) as etcd, nodes(etcd, 2) as (a, b):
        wait_for(lambda: a.names() == {"node-2"} and b.names() == {"node-1"}, 20, message="both registered")
        etcd.kill(etcd.leader())
        a.add(endpoint(1, "10.200.1.10", 5000))
        wait_for(lambda: net("10.200.1.10/32") in b.remote(), 20, message="published with the leader killed")
        assert a.names() == {"node-2"} and b.names() == {"node-1"}  # nobody dropped out meanwhile


def test_all_of_etcd_down_converges_without_restart() -> None:
    with running_etcd(1) as etcd, nodes(etcd, 2) as (a, b):
        a.add(endpoint(1, "10.200.1.10", 5000))
        wait_for(lambda: net("10.200.1.10/32") in b.remote(), 20, message="published")
        member = etcd.members[0].name
        etcd.kill(member)
        a.add(endpoint(2, "10.200.1.11", 5001))
        wait_for(lambda: a.runtime.ipcache.last_error, 15, message="a's publish failed while etcd is down")
        assert net("10.200.1.10/32") in b.remote() and b.names() == {"node-1"}  # the views keep what they had
        etcd.restart(member)
        wait_for(lambda: net("10.200.1.11/32") in b.remote(), 30, message="converged after etcd returned")
        wait_for(lambda: not a.runtime.controller.pending(), 10, message="nothing pending")


def test_agents_take_their_pod_cidrs_from_the_pool_before_ipam(tmp_path: Path) -> None:
    """The agent's start-up step (agent/cluster.py): claimed from the pool, kept across a restart,
    from the cache with etcd down."""
    with running_etcd(1) as etcd:
        endpoints = ",".join(etcd.unix_endpoints)
        flags = ["--kvstore", "etcd", "--kvstore-endpoints", endpoints, "--cluster-pool-ipv4-cidr", "10.210.0.0/16",
                 "--cluster-pool-mask-size", "24", "--cluster-pool-ipv6-cidr", "fd00:210::/48"]
        claimed = {}
        for name in ("cilia-clu-p1", "cilia-clu-p2"):
            config = parse_config(["--node", name, *flags])
            shutil.rmtree(config.paths.state_dir, ignore_errors=True)
            side = AgentEtcd(config)
            try:
                claimed[name] = side.claim_pod_cidrs(config)
            finally:
                side.stop()
        try:
            one, two = claimed["cilia-clu-p1"], claimed["cilia-clu-p2"]
            assert one.ipv4_pod_cidr != two.ipv4_pod_cidr and one.ipv6_pod_cidr != two.ipv6_pod_cidr
            assert one.ipv6_pod_cidr is not None and one.ipv6_pod_cidr.prefixlen == 64
            etcd.kill(etcd.members[0].name)
            config = parse_config(["--node", "cilia-clu-p1", *flags])
            side = AgentEtcd(config)
            try:
                again = side.claim_pod_cidrs(config)  # etcd down: the cached claim
            finally:
                side.stop()
            assert (again.ipv4_pod_cidr, again.ipv6_pod_cidr) == (one.ipv4_pod_cidr, one.ipv6_pod_cidr)
        finally:
            for name in claimed:
                shutil.rmtree(parse_config(["--node", name, *flags]).paths.state_dir, ignore_errors=True)
