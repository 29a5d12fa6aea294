"""The access-log record survives its datagram; bad datagrams are ValueErrors, never crashes."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cilia.proxy.accesslog import AccessLogSender, AccessRecord, DnsRecord, HttpRecord, PolicyRef, decode


def _record() -> AccessRecord:
    return AccessRecord(
        time_ns=1, type="RESPONSE", verdict="FORWARDED", source_ip="10.0.0.1", source_port=4000,
        destination_ip="10.0.0.2", destination_port=80, protocol="TCP", source_identity=300,
        destination_identity=301, endpoint_id=7, ingress=True,
        policies=[PolicyRef("CiliumNetworkPolicy", "default", "rule1")], latency_ns=5,
        http=HttpRecord("GET", "http://a/b", "HTTP/1.1", 200, [("X-A", "b")]),
        dns=DnsRecord("a.example.test.", ["A"], 0, ["1.2.3.4"], 30))


def test_round_trip() -> None:
    assert decode(_record().encode()) == _record()


@given(st.binary(max_size=300))
def test_garbage_is_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        decode(data)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)


@given(st.dictionaries(st.sampled_from(["time_ns", "type", "verdict", "source_ip", "http", "dns", "policies",
                                        "source_port", "ingress", "bogus"]), _json, max_size=10))
def test_mutated_records_are_value_errors(mutation: dict[str, object]) -> None:
    """A real record with fields replaced by arbitrary JSON: decoded or a ValueError, nothing else."""
    raw = json.loads(_record().encode())
    raw.update(mutation)
    with contextlib.suppress(ValueError):
        decode(json.dumps(raw).encode())


def test_unknown_field_is_named() -> None:
    with pytest.raises(ValueError, match="bogus"):
        decode(b'{"bogus": 1}')


def test_sender_without_agent_counts_lost(tmp_path: Path) -> None:
    sender = AccessLogSender(tmp_path / "none.sock")
    sender.send(_record())
    assert (sender.sent, sender.lost) == (0, 1)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "a.sock"))
    sender = AccessLogSender(tmp_path / "a.sock")
    sender.send(_record())
    assert decode(sock.recv(65536)) == _record()
    sock.close()
    sender.close()
