"""The packing of typed LB entries (cilia.lb.entries, cilia.lb.affinity) in cilia.maps.lb: each
round-trips, packs to the same bytes as the C-mirror records, and LbMaps reads, writes and fails
in typed terms. No kernel: LbMaps gets fake maps."""

from __future__ import annotations

import ipaddress
from array import array
from typing import cast

import pytest

from cilia.bpf import BpfError, BpfMap
from cilia.lb.affinity import AffinityEntry, AffinityKey
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
from cilia.lb.model import BackendState
from cilia.lb.reconcile import LbMapError, Put, Remove
from cilia.maps import lb as lbm
from cilia.testing.fakes import FakeMap

ip = ipaddress.ip_address


@pytest.mark.parametrize("address", ["10.96.0.10", "fd00:96::10"])
@pytest.mark.parametrize("slot", [0, 1, 0x0203])
def test_slot_key_round_trips_and_matches_the_c_record(address: str, slot: int) -> None:
    key = SlotKey(ip(address), 8080, 17, slot)
    raw = lbm.pack_slot_key(key)
    assert raw == lbm.ServiceKey(ip(address), 8080, 17, slot).pack()
    assert lbm.unpack_slot_key(raw) == key
    assert lbm.unpack_slot_key(raw).address.version == ip(address).version


@pytest.mark.parametrize(("external", "affinity", "maglev", "flags"), [
    (False, False, False, 0),
    (True, False, True, lbm.SVC_F_EXTERNAL | lbm.SVC_F_MAGLEV),
    (False, True, False, lbm.SVC_F_AFFINITY),
    (True, True, True, lbm.SVC_F_EXTERNAL | lbm.SVC_F_AFFINITY | lbm.SVC_F_MAGLEV),
])
def test_service_entry_flags_are_the_c_bits(external: bool, affinity: bool, maglev: bool, flags: int) -> None:
    entry = ServiceEntry(count=3, rev_nat_id=0x0102, external=external, affinity=affinity, maglev=maglev,
                         affinity_timeout=10800 if affinity else 0)
    raw = lbm.pack_slot_value(entry)
    assert raw == lbm.ServiceValue(count=3, rev_nat_id=0x0102, flags=flags,
                                   affinity_timeout=entry.affinity_timeout).pack()
    assert lbm.unpack_slot_value(raw, 0) == entry


def test_slot_entry_holds_only_a_backend_id() -> None:
    raw = lbm.pack_slot_value(SlotEntry(0x01020304))
    assert raw == lbm.ServiceValue(backend_id=0x01020304).pack()
    assert lbm.unpack_slot_value(raw, 5) == SlotEntry(0x01020304)


@pytest.mark.parametrize("state", list(BackendState))
@pytest.mark.parametrize("address", ["10.0.0.1", "fd00::1"])
def test_backend_entry_round_trips_with_its_state(state: BackendState, address: str) -> None:
    entry = BackendEntry(ip(address), 8080, 6, state)
    raw = lbm.pack_backend(entry)
    assert raw == lbm.BackendValue(ip(address), 8080, 6, lbm.BACKEND_STATES[state.value]).pack()
    assert lbm.unpack_backend(raw) == entry


def test_backend_of_an_unknown_state_does_not_decode() -> None:
    with pytest.raises(ValueError, match="backend state 9"):
        lbm.unpack_backend(lbm.BackendValue(ip("10.0.0.1"), 80, 6, 9).pack())


def test_revnat_and_maglev_entries_round_trip() -> None:
    revnat = RevNatEntry(ip("fd00:96::10"), 443)
    assert lbm.unpack_revnat(lbm.pack_revnat(revnat)) == revnat
    table = MaglevEntry(array("I", [i % 3 + 1 for i in range(7)]))
    assert lbm.unpack_maglev_entry(lbm.pack_maglev(table.table, 7)) == table


@pytest.mark.parametrize("key", [AffinityKey(7, ip("10.0.0.9")), AffinityKey(7, ip("fd00::9")),
                                 AffinityKey(65535, 0x0102030405060708)])
def test_affinity_key_round_trips(key: AffinityKey) -> None:
    raw = lbm.pack_affinity_key(key)
    assert len(raw) == 24  # struct lb_affinity_key
    assert lbm.unpack_affinity_key(raw) == key


def test_affinity_key_layout_is_what_the_datapath_writes() -> None:
    cookie = lbm.pack_affinity_key(AffinityKey(5, 0x0102030405060708))
    assert cookie == bytes([8, 7, 6, 5, 4, 3, 2, 1]) + bytes(8) + (5).to_bytes(4, "little") + (1).to_bytes(4, "little")
    address = lbm.pack_affinity_key(AffinityKey(5, ip("10.0.0.9")))
    assert address[:16] == b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 9]) and address[20:] == bytes(4)
    assert str(AffinityKey(5, 258)) == "netns:258" and str(AffinityKey(5, ip("10.0.0.9"))) == "10.0.0.9"


# --- LbMaps in typed entries -------------------------------------------------------------------------


class FailingMap(FakeMap):
    """A fake map whose update of one key fails as a full map's does."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        super().__init__()
        self.fail_on = fail_on

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if key == self.fail_on:
            raise BpfError("map cilia_lb_services_v1: update", 7)  # E2BIG: the map is full
        super().update(key, value, flags)


def fake_maps(fail_on: bytes | None = None) -> tuple[lbm.LbMaps, dict[str, FailingMap]]:
    maps = {name: FailingMap(fail_on if name == lbm.SERVICES_NAME else None) for name in lbm.NAMES}
    return lbm.LbMaps({n: cast(BpfMap, m) for n, m in maps.items()}, maglev_size=7), maps


MASTER = SlotKey(ip("10.96.0.10"), 80, 6)
WANTED = LbEntries(
    services={MASTER.at(1): SlotEntry(1), MASTER: ServiceEntry(count=1, rev_nat_id=2, external=True, maglev=True)},
    backends={1: BackendEntry(ip("10.0.0.1"), 8080, 6, BackendState.TERMINATING)},
    revnat={2: RevNatEntry(ip("10.96.0.10"), 80)},
    maglev={2: MaglevEntry(array("I", [1] * 7))})


def test_written_entries_read_back_as_written() -> None:
    maps, raw = fake_maps()
    operations = [Put(LbTable.BACKENDS, 1, WANTED.backends[1]), Put(LbTable.REVNAT, 2, WANTED.revnat[2]),
                  Put(LbTable.MAGLEV, 2, WANTED.maglev[2]), Put(LbTable.SERVICES, MASTER.at(1), SlotEntry(1)),
                  Put(LbTable.SERVICES, MASTER, WANTED.services[MASTER])]
    assert maps.write(operations) == 5
    assert maps.entries() == WANTED
    assert raw[lbm.BACKENDS_NAME].data == {lbm.pack_id(1): lbm.pack_backend(WANTED.backends[1])}
    assert maps.write([Remove(LbTable.SERVICES, MASTER), Remove(LbTable.MAGLEV, 2)]) == 2
    assert MASTER not in maps.entries().services and maps.entries().maglev == {}


def test_an_entry_that_does_not_decode_is_left_out_of_what_is_read() -> None:
    maps, raw = fake_maps()
    raw[lbm.BACKENDS_NAME].data[lbm.pack_id(3)] = lbm.BackendValue(ip("10.0.0.3"), 80, 6, 9).pack()
    raw[lbm.BACKENDS_NAME].data[lbm.pack_id(4)] = lbm.pack_backend(BackendEntry(ip("10.0.0.4"), 80, 6))
    assert maps.entries().backends == {4: BackendEntry(ip("10.0.0.4"), 80, 6)}


def test_a_failed_map_operation_is_an_lb_map_error_after_the_ones_before_it() -> None:
    maps, raw = fake_maps(fail_on=lbm.pack_slot_key(MASTER))
    with pytest.raises(LbMapError, match="cilia_lb_services_v1: update"):
        maps.write([Put(LbTable.SERVICES, MASTER.at(1), SlotEntry(1)), Put(LbTable.SERVICES, MASTER,
                                                                          WANTED.services[MASTER])])
    assert list(raw[lbm.SERVICES_NAME].data) == [lbm.pack_slot_key(MASTER.at(1))]


def test_a_bug_is_not_disguised_as_a_map_error() -> None:
    maps, _ = fake_maps()
    with pytest.raises(ValueError, match="Maglev table has 7 entries"):
        maps.write([Put(LbTable.MAGLEV, 2, MaglevEntry(array("I", [1, 2])))])


def test_affinity_entries_are_read_and_deleted_by_typed_key() -> None:
    maps, raw = fake_maps()
    by_address, by_netns = AffinityKey(2, ip("10.0.0.9")), AffinityKey(2, 77)
    for key, value in ((by_address, (1, 100)), (by_netns, (1, 50))):
        raw[lbm.AFFINITY_NAME].data[lbm.pack_affinity_key(key)] = lbm._AFFINITY_VALUE.pack(*value)
    assert maps.affinity() == {by_address: AffinityEntry(1, 100), by_netns: AffinityEntry(1, 50)}
    assert maps.delete_affinity([by_netns, AffinityKey(3, 77)]) == 1
    assert maps.affinity() == {by_address: AffinityEntry(1, 100)}
