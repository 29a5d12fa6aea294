"""Policy in the datapath through BPF_PROG_RUN: rules parsed from YAML, resolved, compressed into
map state, installed, and real packets checked for verdict, drop reason and the deciding rule."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cilia.bpf import BpfObject
from cilia.datapath import EndpointConfig, default_bpf_dir
from cilia.identity.labels import Label, LabelSet
from cilia.maps.endpoints import EndpointInfo, EndpointsMap
from cilia.maps.ipcache import IpcacheMap
from cilia.maps.policy import PolicyMaps, StateFlag
from cilia.monitor.events import EVENT_DROP, EVENT_POLICY_VERDICT, MonitorEvent, decode
from cilia.policy.cilium import parse_cilium_policy
from cilia.policy.mapstate import PeerIndex, compute_map_state
from cilia.policy.repository import PolicyRepository
from cilia.policy.resolve import resolve_endpoint
from cilia.policy.rules import CIDR_IDENTITY_BASE, IdentityView, PolicyRef
from cilia.testing.bpf import RingEvents
from cilia.testing.packets import (
    LXC_MAC,
    PEER,
    PEER_LXC_MAC,
    PEER_MAC,
    POD,
    POD_MAC,
    TC_ACT_OK,
    TC_ACT_SHOT,
    WORLD,
    csum,
    mac,
)

POD_ID, PEER_ID, CIDR_ID = 256, 257, CIDR_IDENTITY_BASE + 1
POD_LABELS = LabelSet.from_k8s({"app": "server"}, "default")
PEER_LABELS = LabelSet.from_k8s({"app": "client"}, "default")
UNIVERSE = [IdentityView(1, LabelSet([Label("reserved", "host")])), IdentityView(2, LabelSet([Label("reserved", "world")])),
            IdentityView(POD_ID, POD_LABELS), IdentityView(PEER_ID, PEER_LABELS),
            IdentityView(CIDR_ID, LabelSet([Label("cidr", "198.51.100.0/24")]), ipaddress.ip_network("198.51.100.0/24"))]



def packet(src: str, dst: str, dport: int, *, proto: int = 6, flags: int = 0x02, sport: int = 40000,
           icmp_type: int = 8) -> bytes:
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    else:
        l4 = struct.pack("!BBHHH", icmp_type, 0, 0, 7, 1)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    header = header[:10] + struct.pack("!H", csum(header)) + header[12:]
    return mac(LXC_MAC) + mac(POD_MAC) + b"\x08\x00" + header + l4


class Datapath:
    """One endpoint's program instance (POD, endpoint 1) with a local peer (PEER, endpoint 2)."""

    def __init__(self, obj: BpfObject, events: RingEvents) -> None:
        self.obj = obj
        self.policy = PolicyMaps(obj.map("cilia_policy_state_v1"), obj.map("cilia_policy_sel_v1"),
                                 obj.map("cilia_policy_v1"))
        self.repository = PolicyRepository()
        self.events = events

    def apply(self, text: str, *, audit: bool = False) -> None:
        for raw in yaml.safe_load_all(text):
            raw.setdefault("metadata", {}).setdefault("namespace", "default")
            self.repository.replace(PolicyRef(raw["kind"], "default", raw["metadata"]["name"]),
                                    parse_cilium_policy(raw))
        self.install(audit=audit)

    def install(self, *, audit: bool = False) -> None:
        index = PeerIndex(UNIVERSE)
        for endpoint_id, labels in ((1, POD_LABELS), (2, PEER_LABELS)):
            policy = resolve_endpoint(self.repository.rules(), labels, audit=audit)
            self.policy.install(endpoint_id, compute_map_state(policy, index))

    def run(self, data: bytes, program: str = "cil_to_container") -> int:
        return self.obj.program(program).test_run(data).retval

    def drain(self) -> list[MonitorEvent]:
        return [decode(e) for e in self.events.take()]


@pytest.fixture
def dp(pin_dir: Path) -> Iterator[Datapath]:
    config = EndpointConfig(
        endpoint_id=1, identity=POD_ID, lxc_ifindex=4, lxc_mac=LXC_MAC, pod_mac=POD_MAC,
        pod_ipv4=ipaddress.IPv4Address(POD), pod_ipv6=None, router_ipv4=ipaddress.IPv4Address("10.200.1.1"),
        router_ipv6=None, aggregation=0,
    )
    obj = BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pin_dir, rodata={"CONFIG": config.pack()},
                         max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096})
    try:
        with RingEvents(obj.map("cilia_events_v1")) as events:
            EndpointsMap(obj.map("cilia_endpoints_v1")).upsert(
                ipaddress.IPv4Address(PEER), EndpointInfo(ifindex=6, endpoint_id=2, mac=PEER_MAC,
                                                           lxc_mac=PEER_LXC_MAC, identity=PEER_ID))
            ipcache = IpcacheMap(obj.map("cilia_ipcache_v1"))
            ipcache.upsert(ipaddress.ip_network("198.51.100.0/24"), CIDR_ID)
            ipcache.upsert(ipaddress.ip_network(f"{PEER}/32"), PEER_ID)
            ipcache.upsert(ipaddress.ip_network(f"{POD}/32"), POD_ID)
            yield Datapath(obj, events)
    finally:
        obj.close()


SERVER_INGRESS = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromCIDR: [198.51.100.0/24]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8000", endPort: 8100, protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: client}}]
  - icmps: [{fields: [{type: EchoRequest}]}]
  ingressDeny:
  - fromCIDR: [198.51.100.0/24]
    toPorts: [{ports: [{port: "8050", protocol: TCP}]}]
"""


def drops(events: list[MonitorEvent]) -> list[tuple[int, int, str, int]]:
    return [(e.drop_reason, e.endpoint_id, e.direction, e.rule_id) for e in events if e.type == EVENT_DROP]


def test_no_policy_state_fails_closed(dp: Datapath) -> None:
    assert dp.run(packet(WORLD, POD, 80)) == TC_ACT_SHOT
    assert drops(dp.drain()) == [(220, 1, "INGRESS", 0)]


def test_ingress_allow_by_cidr_port_range_and_icmp_type(dp: Datapath) -> None:
    dp.apply(SERVER_INGRESS)
    assert dp.run(packet(WORLD, POD, 80)) == TC_ACT_OK
    assert dp.run(packet(WORLD, POD, 8000, sport=40001)) == TC_ACT_OK
    assert dp.run(packet(WORLD, POD, 8100, sport=40002)) == TC_ACT_OK
    assert dp.run(packet(WORLD, POD, 8101, sport=40003)) == TC_ACT_SHOT
    assert dp.run(packet(WORLD, POD, 80, proto=17, sport=40004)) == TC_ACT_SHOT  # UDP not allowed
    assert dp.run(packet(WORLD, POD, 0, proto=1, icmp_type=8)) == TC_ACT_OK  # echo request
    assert dp.run(packet(WORLD, POD, 0, proto=1, icmp_type=13)) == TC_ACT_SHOT  # timestamp
    assert [d[0] for d in drops(dp.drain())] == [133, 133, 133]


def test_deny_wins_and_names_its_rule(dp: Datapath) -> None:
    dp.apply(SERVER_INGRESS)
    assert dp.run(packet(WORLD, POD, 8050)) == TC_ACT_SHOT  # inside the allowed range, but denied
    events = dp.drain()
    (reason, endpoint, direction, rule_id), = drops(events)
    info = dp.repository.info(rule_id)
    assert (reason, endpoint, direction) == (181, 1, "INGRESS")
    assert info is not None and info.describe() == "CiliumNetworkPolicy/default/server-ingress ingressDeny[0]"
    verdicts = [e for e in events if e.type == EVENT_POLICY_VERDICT]
    assert [(v.policy_verdict, v.rule_id) for v in verdicts] == [("denied", rule_id)]


def test_local_delivery_checks_the_destinations_ingress_in_the_senders_program(dp: Datapath) -> None:
    dp.apply("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-ingress}
spec:
  endpointSelector: {matchLabels: {app: client}}
  ingress: [{fromEndpoints: [{matchLabels: {app: nobody}}]}]
""")
    assert dp.run(packet(POD, PEER, 80), "cil_from_container") == TC_ACT_SHOT
    assert drops(dp.drain()) == [(133, 2, "INGRESS", 0)]  # charged to the destination endpoint


def test_established_connection_is_cut_by_a_new_deny_but_replies_pass(dp: Datapath) -> None:
    dp.apply(SERVER_INGRESS)
    assert dp.run(packet(WORLD, POD, 80)) == TC_ACT_OK  # SYN: allowed, tracked
    reply = packet(POD, WORLD, 40000, sport=80, flags=0x12)
    assert dp.run(reply, "cil_from_container") == TC_ACT_OK
    dp.apply(SERVER_INGRESS.replace("port: \"8050\"", "port: \"80\""))  # now 80 is denied
    assert dp.run(packet(WORLD, POD, 80, flags=0x10)) == TC_ACT_SHOT  # the next forward packet
    assert dp.run(packet(POD, WORLD, 40000, sport=80, flags=0x10), "cil_from_container") == TC_ACT_OK


def test_audit_mode_lets_denied_traffic_through_and_says_so(dp: Datapath) -> None:
    dp.apply(SERVER_INGRESS, audit=True)
    assert dp.run(packet(WORLD, POD, 9999)) == TC_ACT_OK
    verdicts = [e for e in dp.drain() if e.type == EVENT_POLICY_VERDICT]
    assert [(v.policy_verdict, v.audited) for v in verdicts] == [("default-denied", True)]


def test_policy_change_swaps_generations_and_leaves_no_stale_entries(dp: Datapath) -> None:
    dp.apply(SERVER_INGRESS)
    sizes = (len(list(dp.policy.sel_map.keys())), len(list(dp.policy.policy_map.keys())))
    generation = dp.policy.installed[1].generation
    dp.apply(SERVER_INGRESS.replace("8100", "8200"))
    assert dp.policy.installed[1].generation == generation ^ 1
    after = (len(list(dp.policy.sel_map.keys())), len(list(dp.policy.policy_map.keys())))
    assert after[0] == sizes[0] and abs(after[1] - sizes[1]) <= 4
    fresh = PolicyMaps(dp.policy.state_map, dp.policy.sel_map, dp.policy.policy_map)
    fresh.scan()  # a restarted agent sees exactly what is live
    assert fresh.installed[1].lpm == dp.policy.installed[1].lpm and not fresh.installed[1].stale
    dp.policy.fail(1)
    assert dp.policy.installed[1].flags & StateFlag.FAILED
    after_fail = PolicyMaps(dp.policy.state_map, dp.policy.sel_map, dp.policy.policy_map)
    after_fail.scan()  # the map itself says FAILED (the entry existed before fail(): its presence proves nothing)
    assert after_fail.installed[1].flags & StateFlag.FAILED
    assert dp.run(packet(WORLD, POD, 80, sport=41000)) == TC_ACT_SHOT


