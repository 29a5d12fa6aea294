"""The access-log record survives its datagram; bad datagrams are ValueErrors, never crashes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cilia.proxy.accesslog import (
    FLUSH_DELAY,
    AccessLogSender,
    AccessRecord,
    DnsRecord,
    FlowEncoder,
    HttpRecord,
    PolicyRef,
    _decode,
    decode,
)


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


_text = st.text(max_size=12)


@given(_text, _text, _text, st.lists(st.tuples(_text, _text), max_size=3), st.booleans(),
       st.lists(st.tuples(_text, _text, _text), max_size=2), st.sampled_from(["REQUEST", "RESPONSE"]))
def test_hand_built_http_record_is_the_dataclass_one(method: str, url: str, summary: str,
                                                     headers: list[tuple[str, str]], ingress: bool,
                                                     refs: list[tuple[str, str, str]], kind: str) -> None:
    policies = tuple(PolicyRef(*r) for r in refs)
    encoder = FlowEncoder("10.0.0.1", 4000, "fd00::2", 80, 300, 301)
    for _ in range(2):  # the second time with the policies' cached encoding
        data = encoder.http(12, kind, "AUDIT", 7, ingress, policies, 5, summary,  # type: ignore[arg-type]
                            method, url, "HTTP/1.1", 403, headers)
        expected = AccessRecord(
            time_ns=12, type=kind, verdict="AUDIT", source_ip="10.0.0.1", source_port=4000,  # type: ignore[arg-type]
            destination_ip="fd00::2", destination_port=80, protocol="TCP", source_identity=300,
            destination_identity=301, endpoint_id=7, ingress=ingress, policies=list(policies), latency_ns=5,
            summary=summary, http=HttpRecord(method, url, "HTTP/1.1", 403, headers))
        assert decode(data) == expected
        assert json.loads(data) == json.loads(expected.encode())


@given(_text, _text, st.lists(st.tuples(_text, _text), max_size=3), st.sampled_from(["REQUEST", "RESPONSE"]),
       st.lists(st.tuples(st.integers(0, 2**63), st.integers(0, 2**40), st.integers(0, 999)), min_size=1, max_size=4))
def test_a_kept_body_decodes_as_the_whole_record(method: str, url: str, headers: list[tuple[str, str]], kind: str,
                                                 heads: list[tuple[int, int, int]]) -> None:
    """decode keeps a body it read (FlowEncoder's layout): the records with that body and other heads
    are what decoding them in full gives, every time (header values naming a head's key included)."""
    encoder = FlowEncoder("10.0.0.1", 4000, "fd00::2", 80, 300, 301)
    body = encoder.body(kind, "FORWARDED", 7, True, (PolicyRef("k", "ns", "n"),), "", method, url,  # type: ignore[arg-type]
                        "HTTP/1.1", headers)
    for time_ns, latency_ns, code in heads + heads:
        data = FlowEncoder.http(encoder, time_ns, kind, "FORWARDED", 7, True,  # type: ignore[arg-type]
                                (PolicyRef("k", "ns", "n"),), latency_ns, "", method, url, "HTTP/1.1", code, headers)
        assert data.endswith(body)
        got = decode(data)
        assert got == _decode(data)
        assert (got.time_ns, got.latency_ns, got.http and got.http.code) == (time_ns, latency_ns, code)


def test_a_body_naming_a_head_key_is_not_kept() -> None:
    """JSON's last key wins: a body with its own `code` is decoded in full, whatever the head says."""
    encoder = FlowEncoder("10.0.0.1", 4000, "10.0.0.2", 80, 300, 301)
    body = encoder.body("RESPONSE", "FORWARDED", 7, True, (), "", "GET", "/", "HTTP/1.1", ())
    tricked = body.replace(b'"method"', b'"code":201,"method"', 1)
    for code in (200, 404):
        data = b'{"time_ns":1,"latency_ns":2,"http":{"code":%d,%s' % (code, tricked)
        got = decode(data)
        assert got.http is not None and got.http.code == 201 == json.loads(data)["http"]["code"]


def test_a_long_body_is_decoded_every_time_not_kept() -> None:
    from cilia.proxy import accesslog

    encoder = FlowEncoder("10.0.0.1", 4000, "10.0.0.2", 80, 300, 301)
    headers = [("x-long", "v" * 3000)]
    data = encoder.http(1, "REQUEST", "FORWARDED", 7, True, (), 0, "", "GET", "/", "HTTP/1.1", 0, headers)
    body = data[accesslog.RECORD_HEAD.match(data).end():]  # type: ignore[union-attr]
    for _ in range(2):
        assert decode(data).http == HttpRecord("GET", "/", "HTTP/1.1", 0, headers)
    assert body not in accesslog._BODIES


def test_queued_records_wait_for_flush_delay_and_close_sends_them(tmp_path: Path) -> None:
    """send_soon holds a record for up to FLUSH_DELAY (to share a datagram); close() sends what is still queued."""
    agent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    agent.bind(str(tmp_path / "a.sock"))
    agent.setblocking(False)
    sender = AccessLogSender(tmp_path / "a.sock")
    record = _record().encode()

    async def go() -> None:
        sender.send_soon(record)
        await asyncio.sleep(0)
        with pytest.raises(BlockingIOError):  # not yet: others may join it
            agent.recv(65536)
        await asyncio.sleep(FLUSH_DELAY * 5)
        assert agent.recv(65536) == record
        sender.send_soon(record)
        sender.send_soon(record)
        sender.close()  # at the worker's end: nothing queued is left behind
        assert agent.recv(65536) == record + b"\n" + record

    asyncio.run(go())
    assert (sender.sent, sender.lost) == (3, 0)
    agent.close()
