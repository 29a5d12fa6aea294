"""Ids taken back from the LB maps' contents (cilia.lb.recovery)."""

from __future__ import annotations

import ipaddress

from cilia.lb.entries import BackendEntry, LbEntries, ServiceEntry, SlotEntry, SlotKey
from cilia.lb.model import FrontendKey, L4Protocol
from cilia.lb.recovery import backend_ids, rev_nat_ids

ip = ipaddress.ip_address


def test_rev_nat_ids_come_from_service_entries_of_tcp_and_udp_frontends() -> None:
    live = LbEntries(services={
        SlotKey(ip("10.96.0.10"), 80, 6): ServiceEntry(count=1, rev_nat_id=4),
        SlotKey(ip("10.96.0.10"), 80, 6, 1): SlotEntry(9),
        SlotKey(ip("fd00::10"), 53, 17): ServiceEntry(count=0, rev_nat_id=5),
        SlotKey(ip("10.96.0.11"), 80, 132): ServiceEntry(count=0, rev_nat_id=6),  # SCTP: not ours, removed
    })
    assert rev_nat_ids(live) == {FrontendKey(ip("10.96.0.10"), 80, L4Protocol.TCP): 4,
                                 FrontendKey(ip("fd00::10"), 53, L4Protocol.UDP): 5}


def test_backend_ids_are_keyed_by_address_port_protocol() -> None:
    live = LbEntries(backends={3: BackendEntry(ip("10.0.0.1"), 8080, 6), 7: BackendEntry(ip("10.0.0.1"), 8080, 17)})
    assert backend_ids(live) == {(ip("10.0.0.1"), 8080, 6): 3, (ip("10.0.0.1"), 8080, 17): 7}
