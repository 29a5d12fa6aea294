"""Backends on every node: the service engine takes a selected pod's addresses from its local
endpoint or, for a pod on another node, from the cluster view (`RemotePodSource`), follows remote
pods coming and going by recomputing only the services selecting them, and applies the traffic
policies with the pods' real nodes. Also the composition root's grouping of ipcache records into
remote pods (cilia.agent.cluster.remote_pods)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from tests.unit.test_lb_manager import KINDS, FakeDatapath, LocalPod, LocalPods, pod, service

from cilia.agent.cluster import remote_pods
from cilia.cluster.model import IpcacheRecord, NodeRecord, RoutingMode
from cilia.lb.manager import ServiceManager
from cilia.lb.pods import RemotePod
from cilia.resources.store import LocalStore


class Cluster:
    """The remote pod source; records whether it was read under the engine's lock."""

    def __init__(self) -> None:
        self.engine: ServiceManager | None = None
        self.pods: dict[str, RemotePod] | None = {}  # None: the cluster not listed yet

    def remote_pods(self) -> dict[str, RemotePod] | None:
        assert self.engine is not None and not self.engine._lock._is_owned(), "called under the engine's lock"
        return None if self.pods is None else dict(self.pods)


def remote(name: str, node: str, *ips: str) -> RemotePod:
    return RemotePod("default", name, node, tuple(ipaddress.ip_address(ip) for ip in ips))


def engine(tmp_path: Path, datapath: FakeDatapath | None = None, pods: dict[str, RemotePod] | None = None,
           ) -> tuple[LocalStore, LocalPods, Cluster, ServiceManager]:
    store = LocalStore(tmp_path / "resources.db", KINDS)
    local, cluster = LocalPods(), Cluster()
    cluster.pods = pods
    services = ServiceManager(resources=store, endpoints=local, datapath=datapath or FakeDatapath(), node="n1",
                              node_addresses=lambda: [ipaddress.ip_address("192.0.2.11")], state_dir=tmp_path,
                              maglev_size=251, remote_pods=cluster)
    local.engine = cluster.engine = services
    services.load()
    services.sync_all()
    store.watch(services.on_resource_event)
    return store, local, cluster, services


def backends(services: ServiceManager, name: str) -> dict[str, list[tuple[str, str | None]]]:
    """Frontend -> [(backend, node)] of one service."""
    row = next(r for r in services.services() if r["name"] == name)
    return {f["address"]: [(b["address"], b["node"]) for b in f["backends"]] for f in row["frontends"]}


def web_pods() -> list[dict[str, Any]]:
    return [pod("web1", {"app": "web"}), pod("web2", {"app": "web"}), pod("web3", {"app": "web"})]


def test_selected_pods_on_other_nodes_are_backends_with_their_node(tmp_path: Path) -> None:
    store, local, cluster, services = engine(tmp_path, pods={})
    local.list = [LocalPod("default", "web1", "10.1.1.5")]
    cluster.pods = {"default/web2": remote("web2", "n2", "10.1.2.5", "fd00::2:5"),
                    "default/web3": remote("web3", "n3", "10.1.3.5")}
    services.sync_all()
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}, ports=[{"port": 80, "targetPort": "http"}]),
                 *web_pods()])
    assert backends(services, "web") == {"10.96.5.1:80": [("10.1.1.5:8080", "n1"), ("10.1.2.5:8080", "n2"),
                                                           ("10.1.3.5:8080", "n3")]}


def test_only_remote_backends_serve_a_cluster_ip(tmp_path: Path) -> None:
    """The bug: a ClusterIP whose pods are all on other nodes had no backend at all."""
    store, _local, cluster, services = engine(tmp_path, pods={})
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}), *web_pods()])
    assert backends(services, "web") == {"10.96.5.1:80": []}
    cluster.pods = {"default/web2": remote("web2", "n2", "10.1.2.5")}
    services.on_remote_pods_changed()
    assert backends(services, "web") == {"10.96.5.1:80": [("10.1.2.5:8080", "n2")]}


def test_remote_pods_coming_and_going_recompute_only_the_services_selecting_them(tmp_path: Path) -> None:
    store, _local, cluster, services = engine(tmp_path, pods={})
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}),
                 service("db", "10.96.5.2", selector={"app": "db"}),
                 *web_pods(), pod("db1", {"app": "db"})])
    cluster.pods = {"default/db1": remote("db1", "n2", "10.1.2.9")}
    services.on_remote_pods_changed()
    db_before = next(r for r in services.services() if r["name"] == "db")
    recomputed: list[set[str]] = []
    original = services.update

    def spy(names: Any) -> int:
        names = set(names)
        recomputed.append({n.name for n in names})
        return original(names)

    services.update = spy  # type: ignore[method-assign]
    cluster.pods["default/web3"] = remote("web3", "n3", "10.1.3.5")
    services.on_remote_pods_changed()
    assert recomputed == [{"web"}]
    assert backends(services, "web") == {"10.96.5.1:80": [("10.1.3.5:8080", "n3")]}
    assert next(r for r in services.services() if r["name"] == "db") == db_before
    cluster.pods["default/web3"] = remote("web3", "n3", "10.1.3.6")  # its address changed
    services.on_remote_pods_changed()
    assert backends(services, "web") == {"10.96.5.1:80": [("10.1.3.6:8080", "n3")]}
    del cluster.pods["default/web3"]
    services.on_remote_pods_changed()
    assert backends(services, "web") == {"10.96.5.1:80": []}
    recomputed.clear()
    services.on_remote_pods_changed()  # nothing changed: nothing recomputed
    assert recomputed == []


def test_a_remote_pod_without_a_pod_object_or_not_selected_is_no_backend(tmp_path: Path) -> None:
    store, _local, cluster, services = engine(tmp_path, pods={})
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}), pod("other", {"app": "other"})])
    cluster.pods = {"default/ghost": remote("ghost", "n2", "10.1.2.7"),
                    "default/other": remote("other", "n2", "10.1.2.8")}
    services.on_remote_pods_changed()
    assert backends(services, "web") == {"10.96.5.1:80": []}


def test_a_local_endpoint_wins_over_a_remote_record_of_the_same_pod(tmp_path: Path) -> None:
    store, local, cluster, services = engine(tmp_path, pods={})
    local.list = [LocalPod("default", "web1", "10.1.1.5")]
    services.on_endpoints_changed()
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}), *web_pods()])
    cluster.pods = {"default/web1": remote("web1", "n2", "10.1.2.5")}  # stale: the pod moved here
    services.on_remote_pods_changed()
    assert backends(services, "web") == {"10.96.5.1:80": [("10.1.1.5:8080", "n1")]}


def test_internal_traffic_policy_local_leaves_a_cluster_ip_only_this_nodes_pods(tmp_path: Path) -> None:
    store, local, cluster, services = engine(tmp_path, pods={})
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}, internalTrafficPolicy="Local",
                         type="NodePort", ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]), *web_pods()])
    cluster.pods = {"default/web2": remote("web2", "n2", "10.1.2.5")}
    services.on_remote_pods_changed()
    # no backend on n1: the ClusterIP has none (refused), NodePort (external, policy Cluster) has n2's
    assert backends(services, "web") == {"10.96.5.1:80": [], "192.0.2.11:30080": [("10.1.2.5:8080", "n2")]}
    local.list = [LocalPod("default", "web1", "10.1.1.5")]
    services.on_endpoints_changed()
    assert backends(services, "web") == {"10.96.5.1:80": [("10.1.1.5:8080", "n1")],
                                         "192.0.2.11:30080": [("10.1.1.5:8080", "n1"), ("10.1.2.5:8080", "n2")]}


def test_external_traffic_policy_local_leaves_node_ports_only_this_nodes_pods(tmp_path: Path) -> None:
    store, local, cluster, services = engine(tmp_path, pods={})
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}, externalTrafficPolicy="Local",
                         type="NodePort", externalIPs=["203.0.113.7"],
                         ports=[{"port": 80, "targetPort": 8080, "nodePort": 30080}]), *web_pods()])
    cluster.pods = {"default/web2": remote("web2", "n2", "10.1.2.5")}
    services.on_remote_pods_changed()
    # none on n1: the external frontends have no backend (the datapath drops), the ClusterIP has n2's
    assert backends(services, "web") == {"10.96.5.1:80": [("10.1.2.5:8080", "n2")], "192.0.2.11:30080": [],
                                         "203.0.113.7:80": []}
    local.list = [LocalPod("default", "web1", "10.1.1.5")]
    services.on_endpoints_changed()
    assert backends(services, "web") == {"10.96.5.1:80": [("10.1.1.5:8080", "n1"), ("10.1.2.5:8080", "n2")],
                                         "192.0.2.11:30080": [("10.1.1.5:8080", "n1")],
                                         "203.0.113.7:80": [("10.1.1.5:8080", "n1")]}


def test_a_restart_before_the_cluster_is_listed_keeps_the_remote_backends(tmp_path: Path) -> None:
    """The remote backends' pods are cached: a restarted agent (etcd maybe down) writes nothing."""
    datapath = FakeDatapath()
    store, _local, cluster, services = engine(tmp_path, datapath, pods={})
    store.apply([service("web", "10.96.5.1", selector={"app": "web"}), *web_pods()])
    assert cluster.pods is not None
    cluster.pods.update({"default/web2": remote("web2", "n2", "10.1.2.5"),
                         "default/db": remote("db", "n2", "10.1.2.9")})  # no Pod object: not cached
    services.on_remote_pods_changed()
    # the restarted agent: the same maps and state dir, the cluster not listed yet
    _store, _local, cluster, restarted = engine(tmp_path, datapath, pods=None)
    assert restarted.last_sync_operations == 0
    assert backends(restarted, "web") == {"10.96.5.1:80": [("10.1.2.5:8080", "n2")]}
    restarted.on_remote_pods_changed()  # still not listed: nothing changes
    assert backends(restarted, "web") == {"10.96.5.1:80": [("10.1.2.5:8080", "n2")]}
    cluster.pods = {"default/web3": remote("web3", "n3", "10.1.3.5")}  # listed: web2 went meanwhile
    restarted.on_remote_pods_changed()
    assert backends(restarted, "web") == {"10.96.5.1:80": [("10.1.3.5:8080", "n3")]}


# ----- the composition root's grouping ------------------------------------------------------------
def node(name: str) -> NodeRecord:
    return NodeRecord(name, ipaddress.IPv4Address("192.0.2.1"), None, (), RoutingMode.NATIVE)


def record(ip: str, node_name: str, pod_name: str, namespace: str = "default") -> IpcacheRecord:
    return IpcacheRecord(ipaddress.ip_address(ip), 1000, node_name, None, None, namespace, pod_name)


def test_ipcache_records_grouped_into_remote_pods() -> None:
    records = [record("fd00::2:5", "n2", "web2"), record("10.1.2.5", "n2", "web2"),
               record("10.1.3.5", "n3", "web3", "team-a"),
               record("10.1.1.5", "n1", "web1"),  # this node's own
               record("10.1.4.5", "n4", "web4"),  # a node not registered (its lease is going)
               record("10.1.2.6", "n2", ""),  # no pod named: hand-written
               record("10.1.2.7", "n2", "mine")]  # an IP this node hosts
    found = remote_pods("n1", [node("n1"), node("n2"), node("n3")], records,
                        [ipaddress.ip_address("10.1.2.7")])
    assert found == {"default/web2": RemotePod("default", "web2", "n2", (ipaddress.ip_address("10.1.2.5"),
                                                                         ipaddress.ip_address("fd00::2:5"))),
                     "team-a/web3": RemotePod("team-a", "web3", "n3", (ipaddress.ip_address("10.1.3.5"),))}


def test_a_pod_claimed_by_two_nodes_keeps_the_first_nodes_addresses() -> None:
    records = [record("10.1.2.5", "n2", "web"), record("10.1.3.5", "n3", "web")]
    found = remote_pods("n1", [node("n2"), node("n3")], records)
    assert found == {"default/web": RemotePod("default", "web", "n2", (ipaddress.ip_address("10.1.2.5"),))}


def test_the_controller_tells_of_remote_pods_once_the_datapath_holds_their_view() -> None:
    from tests.unit.test_cluster_view import TTL, endpoint
    from tests.unit.test_cluster_view import FakeDatapath as ClusterDatapath
    from tests.unit.test_cluster_view import node as cluster_node

    from cilia.cluster.runtime import ClusterRuntime
    from cilia.kvstore.memory import ManualClock, MemoryKv
    from cilia.kvstore.session import NodeSession
    from cilia.testing.wait import wait_for

    kv = MemoryKv(ManualClock())
    runtimes: list[ClusterRuntime] = []
    seen: list[tuple[dict[str, RemotePod], int]] = []  # remote pods, and how many views were pushed by then
    b_datapath = ClusterDatapath()
    endpoints_a = [endpoint(1, "10.200.1.10", 5000, "web")]
    try:
        for name, last, datapath, endpoints in (("a", 1, ClusterDatapath(), endpoints_a), ("b", 2, b_datapath, [])):
            session = NodeSession(kv, name, TTL)
            session.step()
            runtime = ClusterRuntime(kv=kv, session=session, local=cluster_node(name, last), datapath=datapath,
                                     local_endpoints=lambda e=endpoints: list(e), debounce=0.01, retry_interval=0.05,
                                     tables_changed=(lambda: seen.append((
                                         remote_pods("b", runtimes[1].nodes(), runtimes[1].ipcache_records()),
                                         len(b_datapath.views)))) if name == "b" else None)
            runtimes.append(runtime)
        for runtime in runtimes:
            runtime.node_reflector.start()
            runtime.ipcache_reflector.start()
            runtime.controller.start()
        web = RemotePod("default", "web", "a", (ipaddress.ip_address("10.200.1.10"),))
        wait_for(lambda: any(pods == {"default/web": web} for pods, _ in seen), 5, message="a's pod told to b")
        assert all(views >= 1 for pods, views in seen if pods)  # never before the datapath had the view
        endpoints_a.clear()
        runtimes[0].endpoints_changed()
        wait_for(lambda: seen[-1][0] == {}, 5, message="a's pod gone from b")
    finally:
        for runtime in runtimes:
            runtime.controller.stop()
            runtime.node_reflector.stop()
            runtime.ipcache_reflector.stop()
        kv.close()


def test_the_remote_backend_cache_round_trips_and_skips_garbage() -> None:
    from cilia.lb.pods import decode_remote, encode_remote

    pods = {"default/web2": remote("web2", "n2", "10.1.2.5", "fd00::2:5")}
    assert decode_remote(encode_remote(pods)) == pods
    assert decode_remote({"default/x": {"node": "n2", "addresses": ["no ip"]}, "default/y": {"node": "n2"},
                          "default/z": 5, **encode_remote(pods)}) == pods
    assert decode_remote(["not", "a", "dict"]) == {}
