"""The diff between two sets of typed LB entries and the order its operations are written in:
nothing the datapath can reach ever names an id that is not there yet, or any more."""

from __future__ import annotations

import ipaddress
from array import array

import pytest

from cilia.lb.entries import (
    BackendEntry,
    LbEntries,
    LbTable,
    MaglevEntry,
    RevNatEntry,
    ServiceEntry,
    SlotEntry,
    SlotKey,
)
from cilia.lb.reconcile import LbChanges, LbKeys, Put, Remove, diff, plan

ip = ipaddress.ip_address
A = SlotKey(ip("10.96.0.10"), 80, 6)
B = SlotKey(ip("fd00:96::10"), 443, 6)


def backend(n: int) -> BackendEntry:
    return BackendEntry(ip(f"10.0.0.{n}"), 8080, 6)


def two_services() -> LbEntries:
    return LbEntries(
        services={A: ServiceEntry(count=2, rev_nat_id=1), A.at(1): SlotEntry(1), A.at(2): SlotEntry(2),
                  B: ServiceEntry(count=1, rev_nat_id=2, external=True, maglev=True), B.at(1): SlotEntry(1)},
        backends={1: backend(1), 2: backend(2)},
        revnat={1: RevNatEntry(A.address, 80), 2: RevNatEntry(B.address, 443)},
        maglev={2: MaglevEntry(array("I", [1] * 7))})


def test_diff_of_equal_entries_is_empty() -> None:
    changes = diff(two_services(), two_services())
    assert len(changes.upserts) == 0 and plan(changes) == []


def test_diff_names_changed_new_and_gone_entries() -> None:
    before, after = two_services(), two_services()
    after.backends[2] = BackendEntry(ip("10.0.0.2"), 8080, 6, before.backends[2].state.TERMINATING)
    after.services[A] = ServiceEntry(count=1, rev_nat_id=1)
    del after.services[A.at(2)]
    after.backends[3] = backend(3)
    changes = diff(before, after)
    assert changes.upserts == LbEntries(services={A: ServiceEntry(count=1, rev_nat_id=1)},
                                        backends={2: after.backends[2], 3: backend(3)})
    assert changes.deletes == LbKeys(services=[A.at(2)])


def test_writes_go_backends_revnat_maglev_then_slots_before_their_service_entry() -> None:
    upserts = two_services()
    # service entries first in the dict on purpose: the plan must not follow it
    upserts.services = {A: upserts.services[A], B: upserts.services[B], A.at(1): SlotEntry(1),
                        B.at(1): SlotEntry(1), A.at(2): SlotEntry(2)}
    operations = plan(LbChanges(upserts))
    assert [(type(op), op.table, op.key) for op in operations] == [
        (Put, LbTable.BACKENDS, 1), (Put, LbTable.BACKENDS, 2),
        (Put, LbTable.REVNAT, 1), (Put, LbTable.REVNAT, 2),
        (Put, LbTable.MAGLEV, 2),
        (Put, LbTable.SERVICES, A.at(1)), (Put, LbTable.SERVICES, B.at(1)), (Put, LbTable.SERVICES, A.at(2)),
        (Put, LbTable.SERVICES, A), (Put, LbTable.SERVICES, B),
    ]
    assert all(isinstance(op, Put) and op.value is not None for op in operations)


def test_removals_go_service_entries_then_slots_then_maglev_revnat_backends() -> None:
    deletes = LbKeys(services=[A.at(1), A, B.at(1), A.at(2), B], backends=[1, 2], revnat=[1, 2], maglev=[2])
    assert plan(LbChanges(deletes=deletes)) == [
        Remove(LbTable.SERVICES, A), Remove(LbTable.SERVICES, B),
        Remove(LbTable.SERVICES, A.at(1)), Remove(LbTable.SERVICES, B.at(1)), Remove(LbTable.SERVICES, A.at(2)),
        Remove(LbTable.MAGLEV, 2), Remove(LbTable.REVNAT, 1), Remove(LbTable.REVNAT, 2),
        Remove(LbTable.BACKENDS, 1), Remove(LbTable.BACKENDS, 2),
    ]


def test_a_shrinking_service_lowers_its_count_before_its_slot_and_backend_go() -> None:
    before = two_services()
    after = two_services()
    after.services[A] = ServiceEntry(count=1, rev_nat_id=1)
    del after.services[A.at(2)], after.backends[2]
    assert plan(diff(before, after)) == [
        Put(LbTable.SERVICES, A, ServiceEntry(count=1, rev_nat_id=1)),
        Remove(LbTable.SERVICES, A.at(2)),
        Remove(LbTable.BACKENDS, 2),
    ]


SHRUNK = LbEntries(  # B gone, A's slots refilled with a new backend
    services={A: ServiceEntry(count=2, rev_nat_id=1), A.at(1): SlotEntry(3), A.at(2): SlotEntry(1)},
    backends={1: backend(1), 3: backend(3)}, revnat={1: RevNatEntry(A.address, 80)})
GROWN = LbEntries(  # A gains a slot for a new backend, B a new Maglev table
    services={A: ServiceEntry(count=3, rev_nat_id=1), A.at(1): SlotEntry(1), A.at(2): SlotEntry(2),
              A.at(3): SlotEntry(4), B: ServiceEntry(count=1, rev_nat_id=2, external=True, maglev=True),
              B.at(1): SlotEntry(4)},
    backends={1: backend(1), 2: backend(2), 4: backend(4)},
    revnat={1: RevNatEntry(A.address, 80), 2: RevNatEntry(B.address, 443)},
    maglev={2: MaglevEntry(array("I", [4] * 7))})


@pytest.mark.parametrize("after", [SHRUNK, GROWN], ids=["shrunk", "grown"])
def test_every_prefix_of_a_plan_leaves_no_dangling_id(after: LbEntries) -> None:
    """Replay the plan from two services to a different set, checking after every operation that each
    reachable slot names a backend that exists and each service entry's rev-NAT entry exists."""
    before = two_services()
    state = two_services()
    tables = {LbTable.SERVICES: state.services, LbTable.BACKENDS: state.backends, LbTable.REVNAT: state.revnat,
              LbTable.MAGLEV: state.maglev}
    for op in plan(diff(before, after)):
        table: dict[object, object] = tables[op.table]  # type: ignore[assignment]
        if isinstance(op, Put):
            table[op.key] = op.value
        else:
            del table[op.key]
        for key, entry in state.masters():
            assert entry.rev_nat_id in state.revnat and (not entry.maglev or entry.rev_nat_id in state.maglev)
            for backend_id in state.slots(key):
                assert backend_id in state.backends, f"after {op}: slot names missing backend {backend_id}"
    assert state == after
