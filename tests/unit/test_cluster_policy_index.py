"""The policy engine's remote IP -> identity index, kept in step incrementally by
PolicyAwareClusterSync (cilia.agent.cluster_policy): over random sequences of ipcache puts and
deletes, nodes registering and going, and local IPs coming and going, each turned into the view the
cluster controller would push (`build_view`), the incrementally maintained index equals a full
rebuild from that view; and only what changed is handed over."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_endpoint_lifecycle import FakeDatapath

from cilia.agent.cluster_policy import PolicyAwareClusterSync
from cilia.cluster.controller import build_view
from cilia.cluster.model import (
    ClusterView,
    IPAddress,
    IpcacheRecord,
    Network,
    NodeRecord,
    RemoteEndpoint,
    RemoteEndpoints,
    RoutingMode,
)
from cilia.endpoint.registry import EndpointRegistry
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.lb import kinds as lb_kinds
from cilia.policy import kinds as policy_kinds
from cilia.policy.engine import PolicyEngine, Settings
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.resources.store import LocalStore

LOCAL = "n1"
ADDRESSES: list[IPAddress] = [ipaddress.ip_address(f"10.2.0.{i}") for i in range(1, 7)] + \
    [ipaddress.ip_address(f"fd00:2::{i:x}") for i in range(1, 5)]
NODES = ("n1", "n2", "n3")


class NoDatapath:
    def sync_cluster(self, view: ClusterView) -> object:
        return 0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyEngine]:
    tmp: Path = tmp_path_factory.mktemp("engine")
    resources = LocalStore(tmp / "resources.db", KindRegistry([*CORE_KINDS, *lb_kinds.KINDS, *policy_kinds.KINDS]))
    policy = PolicyEngine(resources=resources, identities=LocalIdentityAllocator(tmp / "identities.json"),
                          datapath=FakeDatapath(), endpoints=EndpointRegistry(), state_dir=tmp, settings=Settings(),
                          max_entries=0)
    yield policy
    policy.stop()


def node_record(name: str) -> NodeRecord:
    index = NODES.index(name) + 1
    return NodeRecord(name, ipaddress.IPv4Address(f"192.0.2.{index}"), None,
                      (ipaddress.ip_network(f"10.2.{index}.0/24"),), RoutingMode.TUNNEL)


def full_rebuild(view: ClusterView) -> dict[IPAddress, int]:
    """What the sync handed the engine before it was incremental."""
    return {prefix.network_address: endpoint.identity for prefix, endpoint in view.remote_endpoints.items()
            if prefix.prefixlen == prefix.max_prefixlen}


events = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(ADDRESSES), st.integers(256, 260), st.sampled_from(NODES)),
    st.tuples(st.just("delete"), st.sampled_from(ADDRESSES)),
    st.tuples(st.just("node-up"), st.sampled_from(NODES[1:])),
    st.tuples(st.just("node-down"), st.sampled_from(NODES[1:])),
    st.tuples(st.just("local-ip"), st.sampled_from(ADDRESSES)),
    st.tuples(st.just("local-ip-gone"), st.sampled_from(ADDRESSES)),
)


class Recording:
    """The engine's update call, counted: how many addresses each sync handed over."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.handed: list[int] = []

    def cluster_endpoints_update(self, changed: Mapping[IPAddress, int], gone: list[IPAddress],
                                 pod_cidrs: list[Network]) -> int | None:
        self.handed.append(len(changed) + len(gone))
        return self.engine.cluster_endpoints_update(changed, gone, pod_cidrs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


@given(st.lists(events, max_size=40), st.sampled_from(list(RoutingMode)))
def test_the_incremental_index_equals_a_full_rebuild(engine: PolicyEngine, steps: list[tuple[Any, ...]],
                                                      mode: RoutingMode) -> None:
    engine.cluster_endpoints_changed({})  # a fresh agent: nothing known yet
    recording = Recording(engine)
    sync = PolicyAwareClusterSync(NoDatapath(), recording)  # type: ignore[arg-type]
    ipcache: dict[IPAddress, IpcacheRecord] = {}
    nodes: dict[str, NodeRecord] = {LOCAL: node_record(LOCAL)}
    local_ips: set[IPAddress] = set()
    previous: dict[IPAddress, int] = {}
    for step in steps:
        kind = step[0]
        if kind == "put":
            _, ip, identity, node = step
            ipcache[ip] = IpcacheRecord(ip, identity, node, node_record(node).ipv4)
        elif kind == "delete":
            ipcache.pop(step[1], None)
        elif kind == "node-up":
            nodes[step[1]] = node_record(step[1])
        elif kind == "node-down":
            nodes.pop(step[1], None)
        elif kind == "local-ip":
            local_ips.add(step[1])
        else:
            local_ips.discard(step[1])
        view = build_view(LOCAL, mode, nodes.values(), ipcache.values(), local_ips)
        sync.sync_cluster(view)
        expected = full_rebuild(view)
        assert engine.cluster_endpoints() == expected
        # only what differs from the last view was handed over
        differs = {ip for ip in expected.keys() | previous.keys() if expected.get(ip) != previous.get(ip)}
        assert recording.handed[-1] == len(differs)
        previous = expected


@given(st.lists(st.dictionaries(st.sampled_from([*ADDRESSES, ipaddress.ip_address("10.9.0.0")]),
                                st.tuples(st.integers(256, 258), st.booleans()), max_size=8), max_size=10))
def test_views_given_as_plain_mappings_of_prefixes(engine: PolicyEngine,
                                                   views: list[dict[IPAddress, tuple[int, bool]]]) -> None:
    """A view's remote_endpoints may be any mapping of networks (tests build dicts): only host
    prefixes count, as before; a mapping and a RemoteEndpoints of the same hosts agree."""
    engine.cluster_endpoints_changed({})
    sync = PolicyAwareClusterSync(NoDatapath(), engine)
    for raw in views:
        mapping: dict[Network, RemoteEndpoint] = {}
        for ip, (identity, wide) in raw.items():
            prefix = ipaddress.ip_network(f"{ip}/{ip.max_prefixlen - 8 if wide else ip.max_prefixlen}", strict=False)
            mapping[prefix] = RemoteEndpoint(identity, None)
        view = ClusterView(RoutingMode.NATIVE, LOCAL, (), mapping)
        sync.sync_cluster(view)
        assert engine.cluster_endpoints() == full_rebuild(view)
        assert RemoteEndpoints.of(mapping) == {p: e for p, e in mapping.items() if p.prefixlen == p.max_prefixlen}


def test_an_unchanged_view_hands_over_nothing(engine: PolicyEngine) -> None:
    engine.cluster_endpoints_changed({})
    recording = Recording(engine)
    sync = PolicyAwareClusterSync(NoDatapath(), recording)  # type: ignore[arg-type]
    records = [IpcacheRecord(ip, 300 + i, "n2", None) for i, ip in enumerate(ADDRESSES)]
    nodes = [node_record("n1"), node_record("n2")]
    sync.sync_cluster(build_view(LOCAL, RoutingMode.NATIVE, nodes, records))
    sync.sync_cluster(build_view(LOCAL, RoutingMode.NATIVE, nodes, records))  # rebuilt, same content
    moved = [IpcacheRecord(records[0].ip, 999, "n2", None), *records[1:]]
    sync.sync_cluster(build_view(LOCAL, RoutingMode.NATIVE, nodes, moved))
    assert recording.handed == [len(ADDRESSES), 0, 1]
    assert engine.cluster_endpoints()[records[0].ip] == 999
