"""Service slots, ClusterIP allocation, the LB map codecs (which mirror bpf/lib/lb.h) and the order
in which LbMaps.apply writes and removes entries. No kernel: LbMaps gets fake maps."""

from __future__ import annotations

import ipaddress
import json
import random
import struct
from pathlib import Path
from typing import cast

import pytest

from cilia.bpf import BpfMap
from cilia.lb.clusterip import ClusterIpAllocator
from cilia.lb.desired import stable_slots
from cilia.lb.model import ServiceName
from cilia.maps import lb as lbm
from cilia.maps.lb import (
    BackendValue,
    LbMaps,
    RevNatValue,
    ServiceKey,
    ServiceValue,
    pack_id,
    pack_maglev,
    unpack_maglev,
)
from cilia.testing.fakes import FakeMap, MapLog

ip = ipaddress.ip_address


# --- stable_slots ----------------------------------------------------------------------------------


def changed_positions(before: list[int], after: list[int]) -> int:
    """Slots whose backend differs (a slot that disappeared or appeared counts as changed)."""
    return sum(1 for i in range(max(len(before), len(after)))
               if i >= len(before) or i >= len(after) or before[i] != after[i])


def test_kept_backends_keep_their_slot() -> None:
    assert stable_slots([5, 3, 9], [9, 5, 3]) == [5, 3, 9]
    assert stable_slots([5, 3, 9], [3, 9, 5, 7]) == [5, 3, 9, 7]


def test_newcomer_fills_a_hole() -> None:
    assert stable_slots([1, 2, 3, 4], [4, 3, 1, 7]) == [1, 7, 3, 4]


def test_newcomers_fill_holes_in_order_then_append() -> None:
    assert stable_slots([1, 2, 3, 4], [1, 4, 8, 6]) == [1, 6, 8, 4]
    assert stable_slots([1, 2, 3], [1, 9, 8, 7]) == [1, 7, 8, 9]


def test_removing_one_of_ten_fills_the_hole_from_the_tail() -> None:
    before = list(range(1, 11))
    after = stable_slots(before, [b for b in before if b != 5])
    assert after == [1, 2, 3, 4, 10, 6, 7, 8, 9]
    assert changed_positions(before, after) == 2
    for removed in before:
        after = stable_slots(before, [b for b in before if b != removed])
        assert sorted(after) == [b for b in before if b != removed]
        assert changed_positions(before, after) <= 2, (removed, after)
    assert stable_slots(before, before[:-1]) == before[:-1]  # the last one: nothing moves


def test_removing_several_compacts() -> None:
    assert stable_slots([1, 2, 3, 4, 5, 6], [1, 6]) == [1, 6]
    assert stable_slots([1, 2, 3, 4], [4]) == [4]
    assert stable_slots([1, 2, 3, 4, 5, 6], [2, 3, 4, 5]) == [5, 2, 3, 4]


def test_adding_to_a_full_list_appends() -> None:
    assert stable_slots([1, 2, 3], [4, 3, 2, 1]) == [1, 2, 3, 4]
    assert stable_slots([3, 1, 2], [1, 2, 3, 5, 4]) == [3, 1, 2, 4, 5]


def test_empty_cases() -> None:
    assert stable_slots([], []) == []
    assert stable_slots([], [3, 1, 2]) == [1, 2, 3]
    assert stable_slots([1, 2, 3], []) == []


def test_randomized_slots_hold_exactly_the_active_set() -> None:
    rng = random.Random(20240611)
    for _ in range(500):
        previous = rng.sample(range(1, 40), rng.randint(0, 16))
        active = rng.sample(range(1, 40), rng.randint(0, 16))
        result = stable_slots(previous, active)
        assert sorted(result) == sorted(active), (previous, active, result)
        assert len(set(result)) == len(result), (previous, active, result)
        for index, kept in enumerate(previous):  # a kept backend inside the new length never moves
            if kept in active and index < len(result):
                assert result[index] == kept, (previous, active, result)


# --- ClusterIpAllocator ----------------------------------------------------------------------------

V4 = ipaddress.IPv4Network("10.96.0.0/24")
V6 = ipaddress.IPv6Network("fd00:96::/112")
WEB = ServiceName("default", "web")
DB = ServiceName("default", "db")
OTHER_WEB = ServiceName("other", "web")


def test_allocates_from_the_first_cidr_skipping_network_and_dot_one(tmp_path: Path) -> None:
    allocator = ClusterIpAllocator([V4, V6], tmp_path / "cluster-ips.json")
    assert allocator.get(WEB, set()) == ip("10.96.0.2")
    assert allocator.get(DB, set()) == ip("10.96.0.3")
    assert allocator.get(OTHER_WEB, set()) == ip("10.96.0.4")  # namespace is part of the name


def test_allocates_v6_when_v6_is_first(tmp_path: Path) -> None:
    allocator = ClusterIpAllocator([V6, V4], tmp_path / "cluster-ips.json")
    assert allocator.get(WEB, set()) == ip("fd00:96::2")


def test_no_cidr_no_address(tmp_path: Path) -> None:
    assert ClusterIpAllocator([], tmp_path / "cluster-ips.json").get(WEB, set()) is None


def test_stable_per_service_and_avoids_taken(tmp_path: Path) -> None:
    allocator = ClusterIpAllocator([V4], tmp_path / "cluster-ips.json")
    taken = {ip("10.96.0.2"), ip("10.96.0.3"), ip("10.96.0.5")}
    assert allocator.get(WEB, set(taken)) == ip("10.96.0.4")
    assert allocator.get(DB, set(taken)) == ip("10.96.0.6")
    assert allocator.get(WEB, set(taken)) == ip("10.96.0.4")
    assert allocator.get(WEB, set()) == ip("10.96.0.4")


def test_exhaustion_returns_none(tmp_path: Path) -> None:
    allocator = ClusterIpAllocator([ipaddress.IPv4Network("10.96.0.0/29")], tmp_path / "cluster-ips.json")
    got = [allocator.get(ServiceName("default", f"s{i}"), set()) for i in range(5)]
    assert [str(a) for a in got] == ["10.96.0.2", "10.96.0.3", "10.96.0.4", "10.96.0.5", "10.96.0.6"]
    assert allocator.get(ServiceName("default", "s5"), set()) is None


def test_persists_across_a_new_instance(tmp_path: Path) -> None:
    state = tmp_path / "cluster-ips.json"
    first = ClusterIpAllocator([V4], state)
    assert first.get(WEB, set()) == ip("10.96.0.2")
    assert first.get(DB, set()) == ip("10.96.0.3")
    assert json.loads(state.read_text()) == {"default/web": "10.96.0.2", "default/db": "10.96.0.3"}
    again = ClusterIpAllocator([V4], state)
    assert again.get(DB, set()) == ip("10.96.0.3")
    assert again.get(OTHER_WEB, set()) == ip("10.96.0.4")
    assert again.get(WEB, set()) == ip("10.96.0.2")


def test_release_frees(tmp_path: Path) -> None:
    state = tmp_path / "cluster-ips.json"
    allocator = ClusterIpAllocator([V4], state)
    assert allocator.get(WEB, set()) == ip("10.96.0.2")
    assert allocator.get(DB, set()) == ip("10.96.0.3")
    allocator.release(WEB)
    allocator.release(WEB)  # twice is harmless
    assert json.loads(state.read_text()) == {"default/db": "10.96.0.3"}
    assert allocator.get(OTHER_WEB, set()) == ip("10.96.0.2")
    assert ClusterIpAllocator([V4], state).get(WEB, set()) == ip("10.96.0.4")


# --- codecs ----------------------------------------------------------------------------------------


def v4_mapped(address: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{address}").packed


def test_sizes_mirror_the_c_structs() -> None:
    assert len(ServiceKey(ip("10.96.0.10"), 80, 6).pack()) == 24  # struct lb_service_key
    assert len(ServiceValue().pack()) == 16  # struct lb_service_value
    assert len(BackendValue(ip("10.0.0.1"), 80, 6).pack()) == 20  # struct lb_backend
    assert len(RevNatValue(ip("10.96.0.10"), 80).pack()) == 20  # struct lb_rev_nat
    assert len(ServiceKey(ip("fd00::1"), 80, 6).pack()) == 24
    assert len(BackendValue(ip("fd00::1"), 80, 6).pack()) == 20
    assert len(RevNatValue(ip("fd00::1"), 80).pack()) == 20


def test_flags_and_states_values() -> None:
    # the C side (enum lb_svc_flags, enum lb_backend_state) is checked by tests/kernel/test_datapath_contract.py
    assert (lbm.SVC_F_EXTERNAL, lbm.SVC_F_AFFINITY, lbm.SVC_F_MAGLEV) == (1, 2, 4)
    assert lbm.BACKEND_STATES == {"active": 0, "terminating": 1, "quarantined": 2}


def test_service_key_v4_raw_bytes_and_round_trip() -> None:
    key = ServiceKey(ip("10.96.0.10"), 0x1F90, 6, slot=0x0203)
    raw = key.pack()
    assert raw == v4_mapped("10.96.0.10") + b"\x1f\x90" + b"\x03\x02" + b"\x06" + b"\0\0\0"
    assert raw[:16] == b"\0" * 10 + b"\xff\xff" + bytes([10, 96, 0, 10])
    assert ServiceKey.unpack(raw) == key
    assert ServiceKey.unpack(raw).address.version == 4


def test_service_key_v6_round_trip() -> None:
    key = ServiceKey(ip("fd00:96::10"), 443, 17)
    raw = key.pack()
    assert raw == ip("fd00:96::10").packed + b"\x01\xbb" + b"\0\0" + b"\x11" + b"\0\0\0"
    assert ServiceKey.unpack(raw) == key
    assert ServiceKey.unpack(raw).address.version == 6


def test_service_value_raw_bytes_and_round_trip() -> None:
    master = ServiceValue(count=5, rev_nat_id=0x0102, flags=lbm.SVC_F_EXTERNAL | lbm.SVC_F_AFFINITY,
                          affinity_timeout=10800)
    raw = master.pack()
    assert raw == struct.pack("<II", 0, 10800) + b"\x05\x00" + b"\x02\x01" + b"\x03" + b"\0\0\0"
    assert ServiceValue.unpack(raw) == master
    slot = ServiceValue(backend_id=0x01020304, rev_nat_id=7)
    assert slot.pack()[:4] == b"\x04\x03\x02\x01"
    assert ServiceValue.unpack(slot.pack()) == slot


@pytest.mark.parametrize("address", ["10.0.0.5", "fd00:10::5"])
def test_backend_value_round_trip(address: str) -> None:
    value = BackendValue(ip(address), 8080, 6, lbm.BACKEND_STATES["terminating"])
    raw = value.pack()
    packed = v4_mapped(address) if ip(address).version == 4 else ip(address).packed
    assert raw == packed + b"\x1f\x90" + b"\x06" + b"\x01"
    assert BackendValue.unpack(raw) == value
    assert BackendValue.unpack(raw).address.version == ip(address).version


@pytest.mark.parametrize("address", ["10.96.0.10", "fd00:96::10"])
def test_rev_nat_value_round_trip(address: str) -> None:
    value = RevNatValue(ip(address), 53)
    raw = value.pack()
    packed = v4_mapped(address) if ip(address).version == 4 else ip(address).packed
    assert raw == packed + b"\x00\x35" + b"\0\0"
    assert RevNatValue.unpack(raw) == value


def test_ids_are_native_u32() -> None:
    assert pack_id(0x01020304) == b"\x04\x03\x02\x01"
    assert lbm.unpack_id(pack_id(65535)) == 65535


def test_maglev_table_round_trip_and_length_check() -> None:
    raw = pack_maglev([1, 2, 0x01020304], 3)
    assert raw == b"\x01\0\0\0" + b"\x02\0\0\0" + b"\x04\x03\x02\x01"
    assert unpack_maglev(raw) == [1, 2, 0x01020304]
    table = [i % 5 + 1 for i in range(lbm.DEFAULT_MAGLEV_SIZE)]
    assert unpack_maglev(pack_maglev(table, lbm.DEFAULT_MAGLEV_SIZE)) == table
    with pytest.raises(ValueError, match="has 3 entries, got 2"):
        pack_maglev([1, 2], 3)
    with pytest.raises(ValueError, match="has 3 entries, got 4"):
        pack_maglev([1, 2, 3, 4], 3)


# --- LbMaps.apply ordering -------------------------------------------------------------------------


def fake_lb_maps() -> tuple[LbMaps, MapLog]:
    log: MapLog = []
    maps = {name: cast(BpfMap, FakeMap(name, log)) for name in lbm.NAMES}
    return LbMaps(maps, maglev_size=7), log


A = ip("10.96.0.10")
B = ip("fd00:96::10")
A_MASTER = ServiceKey(A, 80, 6, 0).pack()
A_SLOT1 = ServiceKey(A, 80, 6, 1).pack()
A_SLOT2 = ServiceKey(A, 80, 6, 2).pack()
B_MASTER = ServiceKey(B, 443, 6, 0).pack()
B_SLOT1 = ServiceKey(B, 443, 6, 1).pack()
BACKEND1 = pack_id(1)
BACKEND2 = pack_id(2)
REVNAT1 = pack_id(1)
REVNAT2 = pack_id(2)


def test_apply_upserts_backends_revnat_maglev_then_services_slots_before_masters() -> None:
    maps, log = fake_lb_maps()
    upserts = {
        lbm.SERVICES_NAME: {  # masters first in the dict on purpose
            A_MASTER: ServiceValue(count=2, rev_nat_id=1).pack(),
            A_SLOT1: ServiceValue(backend_id=1).pack(),
            B_MASTER: ServiceValue(count=1, rev_nat_id=2, flags=lbm.SVC_F_EXTERNAL | lbm.SVC_F_MAGLEV).pack(),
            A_SLOT2: ServiceValue(backend_id=2).pack(),
            B_SLOT1: ServiceValue(backend_id=1).pack(),
        },
        lbm.MAGLEV_NAME: {REVNAT2: pack_maglev([1] * 7, 7)},
        lbm.REVNAT_NAME: {REVNAT1: RevNatValue(A, 80).pack(), REVNAT2: RevNatValue(B, 443).pack()},
        lbm.BACKENDS_NAME: {BACKEND1: BackendValue(ip("10.0.0.1"), 8080, 6).pack(),
                            BACKEND2: BackendValue(ip("10.0.0.2"), 8080, 6).pack()},
    }
    assert maps.apply(upserts, {}) == 10
    assert log == [
        (lbm.BACKENDS_NAME, "update", BACKEND1),
        (lbm.BACKENDS_NAME, "update", BACKEND2),
        (lbm.REVNAT_NAME, "update", REVNAT1),
        (lbm.REVNAT_NAME, "update", REVNAT2),
        (lbm.MAGLEV_NAME, "update", REVNAT2),
        (lbm.SERVICES_NAME, "update", A_SLOT1),
        (lbm.SERVICES_NAME, "update", A_SLOT2),
        (lbm.SERVICES_NAME, "update", B_SLOT1),
        (lbm.SERVICES_NAME, "update", A_MASTER),
        (lbm.SERVICES_NAME, "update", B_MASTER),
    ]
    assert maps.snapshot()[lbm.SERVICES_NAME] == upserts[lbm.SERVICES_NAME]


def test_apply_deletes_service_masters_then_slots_then_maglev_revnat_backends() -> None:
    maps, log = fake_lb_maps()
    deletes = {
        lbm.BACKENDS_NAME: [BACKEND1, BACKEND2],
        lbm.REVNAT_NAME: [REVNAT1, REVNAT2],
        lbm.MAGLEV_NAME: [REVNAT2],
        lbm.SERVICES_NAME: [A_SLOT1, A_MASTER, B_SLOT1, A_SLOT2, B_MASTER],  # slots first on purpose
    }
    assert maps.apply({}, deletes) == 10
    assert log == [
        (lbm.SERVICES_NAME, "delete", A_MASTER),
        (lbm.SERVICES_NAME, "delete", B_MASTER),
        (lbm.SERVICES_NAME, "delete", A_SLOT1),
        (lbm.SERVICES_NAME, "delete", B_SLOT1),
        (lbm.SERVICES_NAME, "delete", A_SLOT2),
        (lbm.MAGLEV_NAME, "delete", REVNAT2),
        (lbm.REVNAT_NAME, "delete", REVNAT1),
        (lbm.REVNAT_NAME, "delete", REVNAT2),
        (lbm.BACKENDS_NAME, "delete", BACKEND1),
        (lbm.BACKENDS_NAME, "delete", BACKEND2),
    ]


def test_apply_shrinking_a_service_writes_before_it_removes() -> None:
    """Backend 2 leaves service A: the master's count drops to 1 before slot 2 and the backend go."""
    maps, log = fake_lb_maps()
    operations = maps.apply(
        {lbm.SERVICES_NAME: {A_MASTER: ServiceValue(count=1, rev_nat_id=1).pack()}},
        {lbm.SERVICES_NAME: [A_SLOT2], lbm.BACKENDS_NAME: [BACKEND2]},
    )
    assert operations == 3
    assert log == [
        (lbm.SERVICES_NAME, "update", A_MASTER),
        (lbm.SERVICES_NAME, "delete", A_SLOT2),
        (lbm.BACKENDS_NAME, "delete", BACKEND2),
    ]


def test_apply_nothing_touches_nothing() -> None:
    maps, log = fake_lb_maps()
    assert maps.apply({}, {}) == 0
    assert log == []
