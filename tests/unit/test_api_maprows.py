"""Map entries rendered for the API (`cilia bpf ... list`): pure functions over decoded entries."""

from __future__ import annotations

import ipaddress

from cilia.agent.api import maprows
from cilia.maps import lb as lbm
from cilia.maps.ct import CtEntry, CtTuple
from cilia.maps.direction import TrafficDirection
from cilia.maps.endpoints import EndpointInfo
from cilia.maps.ipcache import IpcacheValue
from cilia.maps.metrics import MetricsKey
from cilia.maps.policy import ClassEntry, InstalledEntries, PortEntry
from cilia.policy.mapstate import ALLOW, DENY, PortKey, PortValue
from cilia.policy.rules import Direction

ip = ipaddress.ip_address


def test_lb_rows_name_frontends_slots_and_backends() -> None:
    v6, v4 = ip("fd00:96::1"), ip("10.96.0.1")
    services = {
        lbm.ServiceKey(v6, 80, 6): lbm.ServiceValue(count=2, rev_nat_id=3,
                                                    flags=lbm.SVC_F_AFFINITY | lbm.SVC_F_MAGLEV, affinity_timeout=60),
        lbm.ServiceKey(v6, 80, 6, 1): lbm.ServiceValue(backend_id=7),
        # slot 2 is missing: rendered with no backend rather than failing
        lbm.ServiceKey(v4, 53, 17): lbm.ServiceValue(count=1, rev_nat_id=4),
        lbm.ServiceKey(v4, 53, 17, 1): lbm.ServiceValue(backend_id=9),  # backend 9 gone
    }
    backends = {7: lbm.BackendValue(ip("fd00::7"), 8080, 6, lbm.BACKEND_STATES["quarantined"])}
    rows = maprows.lb_rows(services, backends)
    assert rows == [
        {"frontend": "10.96.0.1:53", "protocol": "UDP", "rev_nat_id": 4, "flags": [], "affinity_timeout": 0,
         "backends": [{"slot": 1, "backend_id": 9, "backend": None, "state": None}]},
        {"frontend": "[fd00:96::1]:80", "protocol": "TCP", "rev_nat_id": 3, "flags": ["affinity", "maglev"],
         "affinity_timeout": 60,
         "backends": [{"slot": 1, "backend_id": 7, "backend": "[fd00::7]:8080", "state": "quarantined"},
                      {"slot": 2, "backend_id": None, "backend": None, "state": None}]},
    ]


def test_ct_rows_count_down_to_expiry_and_never_below_zero() -> None:
    tuple_ = CtTuple(ip("10.0.0.1"), ip("10.0.0.2"), 40000, 53, 17)
    rows = maprows.ct_rows([(tuple_, CtEntry(90, 1, 2, 3, 4, 0, 5, 0, 0, False)),
                            (tuple_, CtEntry(10, 0, 0, 0, 0, 0, 5, 0, 0, True))], now=40.5)
    assert [(r["proto"], r["source"], r["destination"], r["expires_in"], r["state"]) for r in rows] == [
        ("UDP", "10.0.0.1:40000", "10.0.0.2:53", 49, "active"), ("UDP", "10.0.0.1:40000", "10.0.0.2:53", 0, "closing")]


def test_metric_rows_name_drop_reasons_and_sort_by_endpoint() -> None:
    egress, ingress = TrafficDirection.EGRESS, TrafficDirection.INGRESS
    rows = maprows.metric_rows({MetricsKey(2, 132, egress): (1, 60), MetricsKey(1, 0, ingress): (5, 300),
                                MetricsKey(2, 250, ingress): (1, 1)})
    assert [(r["endpoint_id"], r["direction"], r["reason"]) for r in rows] == [
        (1, "ingress", "FORWARDED"), (2, "egress", "INVALID_SOURCE_IP"), (2, "ingress", "250")]


def test_endpoint_and_ipcache_rows() -> None:
    info = EndpointInfo(12, 3, "02:00:00:00:00:01", "02:00:00:00:00:02", 1001)
    assert maprows.endpoint_rows({ip("fd00::3"): info}) == [
        {"ip": "fd00::3", "endpoint_id": 3, "ifindex": 12, "mac": "02:00:00:00:00:01", "lxc_mac": "02:00:00:00:00:02",
         "identity": 1001}]


def test_ipcache_rows_show_the_tunnel_endpoint_as_an_address() -> None:
    rows = maprows.ipcache_rows({
        ipaddress.ip_network("10.200.2.7/32"): IpcacheValue.remote(1001, ipaddress.IPv4Address("192.0.2.12")),
        ipaddress.ip_network("10.200.1.0/24"): IpcacheValue(identity=2)})
    assert rows == [{"prefix": "10.200.1.0/24", "identity": 2, "tunnel_endpoint": None},
                    {"prefix": "10.200.2.7/32", "identity": 1001, "tunnel_endpoint": "192.0.2.12"}]


def test_port_text() -> None:
    assert [maprows.port_text(80, 16), maprows.port_text(8000, 14), maprows.port_text(0, 0)] == ["80", "8000-8003", "*"]


def test_policy_rows_expand_classes_and_name_rules() -> None:
    ingress, egress = Direction.INGRESS, Direction.EGRESS
    installed = InstalledEntries(4, 0x1A, classes=[ClassEntry(ingress, 1002, 1), ClassEntry(ingress, 1001, 1),
                                                    ClassEntry(egress, 2, 1)], ports=[
        PortEntry(ingress, 1, PortKey(6, 8000, 14), PortValue(ALLOW, 11)),
        PortEntry(ingress, 0, PortKey(0), PortValue(DENY, 0)),
        PortEntry(egress, 1, PortKey(58), PortValue(ALLOW, 12)),
        PortEntry(egress, 0, PortKey(0), PortValue(ALLOW, 0)),
    ])
    rules = {11: {"kind": "CiliumNetworkPolicy", "namespace": "team-a", "name": "web", "rule": "ingress[0]", "id": 11},
             12: {"kind": "CiliumClusterwideNetworkPolicy", "namespace": "", "name": "dns", "rule": "egress[1]",
                  "id": 12}}
    dump = maprows.policy_rows(4, installed, rules.get)
    assert (dump["endpoint_id"], dump["installed"], dump["flags"], dump["identity_entries"]) == (4, True, 0x1A, 3)
    assert [(r["direction"], r["identities"], r["port"], r["protocol"], r["verdict"], r["rule"])
            for r in dump["entries"]] == [
        ("egress", "any other", "*", "ANY", "allow", "no enforcement"),
        ("egress", [2], "*", "ICMPv6", "allow", "CiliumClusterwideNetworkPolicy/dns egress[1]"),
        ("ingress", "any other", "*", "ANY", "deny", "-"),
        ("ingress", [1001, 1002], "8000-8003", "TCP", "allow", "CiliumNetworkPolicy/team-a/web ingress[0]"),
    ]
    assert maprows.policy_rows(5, None, rules.get) == {"endpoint_id": 5, "installed": False}
