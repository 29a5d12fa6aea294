"""The ring buffer reader against the real datapath: bpf_lxc emits an event per packet (BPF_PROG_RUN
from every other CPU) while the reader drains on its own CPU, and not one event may be lost.

Why this test exists: the kernel reads the consumer position the reader writes on every reserve
(`bpf_ringbuf_reserve` fails when producer - consumer exceeds the ring). A position written in
more than one store (CPython's struct.pack_into clears the bytes before it fills them) is seen as
0 for an instant, and once the producer is past one ring's length that instant fails a reserve
although the ring is empty: 1-3 events lost a run at 50,000 events/s on the lab."""

from __future__ import annotations

import ipaddress
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.bpf import BpfObject
from cilia.datapath import EndpointConfig, default_bpf_dir
from cilia.maps.events import LOST_KEY, lost_total
from cilia.maps.policy import PolicyMaps
from cilia.policy.mapstate import DirectionState, MapState
from cilia.testing.bpf import RingEvents
from cilia.testing.packets import LXC_MAC, POD, POD_MAC, WORLD, csum, mac

RING_BYTES = 4 * 1024 * 1024  # bpf/lib/events.h
RECORD_BYTES = 176  # struct event (168) + the ring's 8-byte header
BURST = 2000  # events per BPF_PROG_RUN call
SECONDS = 3.0  # of concurrent producing and draining


def _packet() -> bytes:
    """An ACK from the pod to the world: bpf_lxc traces it (aggregation off) and sends it to the stack."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 0x10, 65535, 0, 0)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                         ipaddress.IPv4Address(POD).packed, ipaddress.IPv4Address(WORLD).packed)
    header = header[:10] + struct.pack("!H", csum(header)) + header[12:]
    return mac(LXC_MAC) + mac(POD_MAC) + b"\x08\x00" + header + tcp


@pytest.fixture
def lxc(pin_dir: Path) -> Iterator[BpfObject]:
    config = EndpointConfig(
        endpoint_id=1, identity=256, lxc_ifindex=4, lxc_mac=LXC_MAC, pod_mac=POD_MAC,
        pod_ipv4=ipaddress.IPv4Address(POD), pod_ipv6=ipaddress.IPv6Address("fd00:200:1::2"),
        router_ipv4=ipaddress.IPv4Address("10.200.1.1"), router_ipv6=ipaddress.IPv6Address("fd00:200:1::1"),
        aggregation=0,
    )
    obj = BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=pin_dir, rodata={"CONFIG": config.pack()},
                         max_entries={"cilia_ct_tcp_v1": 4096, "cilia_ct_any_v1": 4096})
    try:
        policy = PolicyMaps(obj.map("cilia_policy_state_v1"), obj.map("cilia_policy_sel_v1"),
                            obj.map("cilia_policy_v1"))
        policy.install(1, MapState(DirectionState(), DirectionState()))  # no policy: all passes
        yield obj
    finally:
        obj.close()


def _lost(obj: BpfObject) -> int:
    return lost_total(obj.map("cilia_events_lost_v1").lookup(LOST_KEY) or b"")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a CPU to produce on and one to drain on")
def test_no_event_is_lost_while_the_reader_drains_a_ring_past_its_first_lap(lxc: BpfObject) -> None:
    program, packet = lxc.program("cil_from_container"), _packet()
    cpus = sorted(os.sched_getaffinity(0))
    with RingEvents(lxc.map("cilia_events_v1")) as events:
        # Past one ring's length first: from then on a consumer position seen as 0 fails a reserve.
        for _ in range(RING_BYTES // RECORD_BYTES // BURST + 2):
            assert program.test_run(packet, repeat=BURST).retval == 0  # TC_ACT_OK: to the stack
            events.take()
        assert _lost(lxc) == 0

        produced = [0] * (len(cpus) - 1)
        stop = threading.Event()

        def produce(slot: int, cpu: int) -> None:
            os.sched_setaffinity(0, {cpu})  # this thread only (Linux: 0 is the calling thread)
            while not stop.is_set():
                program.test_run(packet, repeat=BURST)  # ctypes: the GIL is released meanwhile
                produced[slot] += BURST

        threads = [threading.Thread(target=produce, args=(i, cpu)) for i, cpu in enumerate(cpus[1:])]
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {cpus[0]})
        try:
            for thread in threads:
                thread.start()
            read = 0
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:  # drain as fast as we can: every drain stores the position
                read += len(events.take())
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            os.sched_setaffinity(0, affinity)
        read += len(events.take())

        assert sum(produced) > RING_BYTES // RECORD_BYTES  # the run did overlap reader and producers
        assert (_lost(lxc), read) == (0, sum(produced))
