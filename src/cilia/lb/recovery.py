"""Ids taken back from what the LB maps hold, so a restarted agent keeps every id in use and a
sync that computes the same state writes nothing."""

from __future__ import annotations

from cilia.lb.entries import BackendKey, LbEntries
from cilia.lb.model import FrontendKey, L4Protocol


def rev_nat_ids(live: LbEntries) -> dict[FrontendKey, int]:
    """Each frontend's rev-NAT id, from its service entry. A frontend of a protocol services do
    not use is not ours to keep: the sync removes it."""
    ids: dict[FrontendKey, int] = {}
    for key, entry in live.masters():
        protocol = L4Protocol.of_number(key.protocol)
        if protocol is not None:
            ids[FrontendKey(key.address, key.port, protocol)] = entry.rev_nat_id
    return ids


def backend_ids(live: LbEntries) -> dict[BackendKey, int]:
    """Each backend address:port:protocol's id."""
    return {entry.key: backend_id for backend_id, entry in live.backends.items()}
