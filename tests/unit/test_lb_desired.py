"""A frontend's desired entries (cilia.lb.desired): a service entry counting the active backends,
one slot each (kept where they were), the rev-NAT entry, and a Maglev table for external frontends."""

from __future__ import annotations

import ipaddress

from cilia.lb.desired import frontend_entries, maglev_key
from cilia.lb.entries import RevNatEntry, ServiceEntry, SlotEntry, SlotKey
from cilia.lb.maglev import MaglevBackend, build_table
from cilia.lb.model import Backend, BackendState, FrontendKey, FrontendType, L4Protocol, LbFrontend, ServiceName

ip = ipaddress.ip_address
WEB = ServiceName("default", "web")
B1 = Backend(ip("10.0.0.1"), 8080)
B2 = Backend(ip("10.0.0.2"), 8080)
B3 = Backend(ip("10.0.0.3"), 8080, BackendState.TERMINATING)
IDS = {B1: 11, B2: 12, B3: 13}


def frontend(kind: FrontendType = FrontendType.CLUSTER_IP, backends: tuple[Backend, ...] = (B1, B2, B3),
             affinity: int | None = None, protocol: L4Protocol = L4Protocol.TCP) -> LbFrontend:
    return LbFrontend(FrontendKey(ip("10.96.0.10"), 80, protocol), kind, WEB, None, backends, affinity)


def test_cluster_ip_frontend_gets_a_service_entry_slots_and_revnat() -> None:
    entries = frontend_entries(frontend(), 5, IDS, [], 251, 0)
    master = SlotKey(ip("10.96.0.10"), 80, 6)
    assert entries.services == {master: ServiceEntry(count=2, rev_nat_id=5), master.at(1): SlotEntry(11),
                                master.at(2): SlotEntry(12)}  # the terminating backend gets no slot
    assert entries.revnat == {5: RevNatEntry(ip("10.96.0.10"), 80)}
    assert entries.maglev == {} and entries.backends == {}


def test_udp_frontend_is_keyed_by_its_protocol_number() -> None:
    entries = frontend_entries(frontend(protocol=L4Protocol.UDP), 5, IDS, [], 251, 0)
    assert {k.protocol for k in entries.services} == {17}


def test_slots_stay_where_the_previous_write_had_them() -> None:
    entries = frontend_entries(frontend(), 5, IDS, [12, 11], 251, 0)
    master = SlotKey(ip("10.96.0.10"), 80, 6)
    assert [entries.services[master.at(s)] for s in (1, 2)] == [SlotEntry(12), SlotEntry(11)]


def test_affinity_sets_the_flag_and_timeout() -> None:
    entries = frontend_entries(frontend(affinity=30), 5, IDS, [], 251, 0)
    assert entries.services[SlotKey(ip("10.96.0.10"), 80, 6)] == ServiceEntry(
        count=2, rev_nat_id=5, affinity=True, affinity_timeout=30)


def test_external_frontend_gets_the_maglev_table_of_its_active_backends() -> None:
    entries = frontend_entries(frontend(FrontendType.NODE_PORT), 5, IDS, [], 251, 3)
    master = entries.services[SlotKey(ip("10.96.0.10"), 80, 6)]
    assert master == ServiceEntry(count=2, rev_nat_id=5, external=True, maglev=True)
    expected = build_table([MaglevBackend(11, "10.0.0.1:8080"), MaglevBackend(12, "10.0.0.2:8080")], 251, 3)
    assert list(entries.maglev[5].table) == expected


def test_external_frontend_without_active_backends_has_no_table() -> None:
    entries = frontend_entries(frontend(FrontendType.LOAD_BALANCER, backends=(B3,)), 5, IDS, [], 251, 0)
    assert entries.maglev == {}
    assert entries.services == {SlotKey(ip("10.96.0.10"), 80, 6): ServiceEntry(count=0, rev_nat_id=5, external=True)}


def test_maglev_key_keeps_its_historic_text_for_ipv6() -> None:
    """Not bracketed: the permutation hashes this text, and tables must not change on upgrade."""
    assert maglev_key(Backend(ip("fd00::5"), 8080)) == "fd00::5:8080"
