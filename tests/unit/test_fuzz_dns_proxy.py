"""Fuzz the DNS proxy's packet handling (cilia.proxy.dns.DnsCore.handle): arbitrary bytes and
mutated real queries never raise, never reach the resolver unless they parse into an allowed
question, and any reply is a parseable DNS response with the query's id."""

from __future__ import annotations

import asyncio
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
