"""Fuzz the DNS proxy's packet handling (cilia.proxy.dns.DnsCore.handle): arbitrary bytes and
mutated real queries never raise, never reach the resolver unless they parse into an allowed
question, and any reply is a parseable DNS response with the query's id."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import dns.message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.test_dns_proxy import CLIENT, SERVER, Setup

EXAMPLES = 1500
QUERIES = [dns.message.make_query(n, t).to_wire() for n in ("img.cdn.example.test", "api.example.test", "x.y.z")
           for t in ("A", "AAAA", "TXT")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(QUERIES)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.integers(0, 2))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:
            data[at] = draw(st.integers(0, 255))
        elif op == 1:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:at + draw(st.integers(1, 8))]
    return bytes(data)


def _check(tmp: Path, wire: bytes) -> None:
    s = Setup(tmp)
    out = asyncio.run(s.core.handle(wire, CLIENT, SERVER, "UDP"))
    if out is not None:
        reply = dns.message.from_wire(out)
        assert reply.id == int.from_bytes(wire[:2], "big")
    assert s.core.stats.queries == 1 and s.core.stats.internal_errors == 0


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=600), mutated()))
def test_any_packet_is_answered_or_dropped(tmp_path: Path, wire: bytes) -> None:
    _check(tmp_path, wire)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from([(0, 20), (41, 74), (0, 19), (41, 20)]), st.binary(max_size=40))
def test_original_destination_from_any_ancillary_data(where: tuple[int, int], data: bytes) -> None:
    """IP(V6)_ORIGDSTADDR parsing never raises; a short or foreign cmsg gives None."""
    import ipaddress
    import socket

    from cilia.proxy.dns_server import _orig_dst

    got = _orig_dst([(where[0], where[1], data)])
    if got is not None:
        address, port = got
        assert 0 <= port <= 65535 and ipaddress.ip_address(address)
        assert (where, len(data) >= 8) == ((0, 20), True) or (where, len(data) >= 24) == ((41, 74), True)
    v6 = struct.pack("!HHI16sI", socket.AF_INET6, 53, 0, ipaddress.IPv6Address("2001:db8:100::35").packed, 0)
    assert _orig_dst([(41, 74, v6)]) == ("2001:db8:100::35", 53)
    v4 = struct.pack("!HH4s8x", socket.AF_INET, 53, bytes([198, 51, 100, 53]))
    assert _orig_dst([(0, 20, v4)]) == ("198.51.100.53", 53)
