"""API rows of the service engine (cilia.lb.views): addresses as address:port ([v6]:port), ids looked up."""

from __future__ import annotations

import ipaddress
from array import array

from cilia.lb.desired import ServiceState
from cilia.lb.entries import MaglevEntry
from cilia.lb.model import (
    Backend,
    BackendState,
    FrontendKey,
    FrontendType,
    L4Protocol,
    LbFrontend,
    ServiceName,
    ServicePort,
    ServiceSpec,
    ServiceType,
)
from cilia.lb.views import maglev_rows, rev_nat_row, service_rows

ip = ipaddress.ip_address
WEB = ServiceName("default", "web")
KEY = FrontendKey(ip("fd00:96::10"), 80, L4Protocol.TCP)
B1 = Backend(ip("fd00:1::1"), 8080, pod="default/web1", node="n1")
B2 = Backend(ip("fd00:1::2"), 8080, BackendState.TERMINATING)
SPEC = ServiceSpec(WEB, ServiceType.NODE_PORT, (KEY.address,), (ServicePort("http", L4Protocol.TCP, 80, 8080),),
                   affinity_timeout=30)


def state() -> ServiceState:
    s = ServiceState(SPEC, (KEY.address,), [LbFrontend(KEY, FrontendType.NODE_PORT, WEB, "http", (B1, B2))])
    s.entries.maglev[4] = MaglevEntry(array("I", [11, 12, 11, 11, 12, 11, 11]))
    return s


def backend_id(key: tuple[object, int, int]) -> int | None:
    return {(B1.address, 8080, 6): 11, (B2.address, 8080, 6): 12}.get(key)  # type: ignore[call-overload]


def test_service_rows() -> None:
    rows = service_rows({WEB: state(), ServiceName("default", "gone"): ServiceState(None)}, {WEB: "full map"},
                        lambda k: 4, backend_id)
    assert rows == [{
        "namespace": "default", "name": "web", "type": "NodePort", "cluster_ips": ["fd00:96::10"],
        "session_affinity": "ClientIP (30 s)", "conflicts": [], "error": "full map",
        "frontends": [{"address": "[fd00:96::10]:80", "protocol": "TCP", "type": "NodePort", "port_name": "http",
                       "rev_nat_id": 4, "local_only": False, "backends": [
                           {"address": "[fd00:1::1]:8080", "state": "active", "weight": 1, "pod": "default/web1",
                            "node": "n1", "backend_id": 11},
                           {"address": "[fd00:1::2]:8080", "state": "terminating", "weight": 1, "pod": None,
                            "node": None, "backend_id": 12}]}],
    }]


def test_maglev_rows_count_entries_per_backend() -> None:
    assert maglev_rows(state(), lambda k: 4, backend_id) == [{
        "frontend": "[fd00:96::10]:80", "type": "NodePort", "rev_nat_id": 4, "size": 7,
        "entries_per_backend": {"[fd00:1::1]:8080": 5, "[fd00:1::2]:8080": 2},
        "head": ["[fd00:1::1]:8080", "[fd00:1::2]:8080", "[fd00:1::1]:8080", "[fd00:1::1]:8080",
                 "[fd00:1::2]:8080", "[fd00:1::1]:8080", "[fd00:1::1]:8080"]}]


def test_rev_nat_row_with_and_without_an_owner() -> None:
    assert rev_nat_row(KEY, WEB) == {"service": "default/web", "namespace": "default", "name": "web",
                                     "address": "fd00:96::10", "port": 80, "protocol": "TCP",
                                     "frontend": "[fd00:96::10]:80"}
    assert rev_nat_row(FrontendKey(ip("10.96.0.1"), 53, L4Protocol.UDP), None)["service"] is None
