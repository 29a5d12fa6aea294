"""The cluster's record codecs and the decoded table: round trips, garbage raising RecordError
naming the key (fuzzed: nothing else ever escapes), the table logging and skipping it."""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.mutation import FUZZ, mutated

from cilia.cluster import codec
from cilia.cluster.codec import RecordError
from cilia.cluster.model import IpcacheRecord, NodeRecord, RoutingMode
from cilia.cluster.table import RecordTable

NODE = NodeRecord("node-a", ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv6Address("2001:db8::1"),
                  (ipaddress.ip_network("10.200.1.0/24"), ipaddress.ip_network("fd00:200:0:1::/64")),
                  RoutingMode.TUNNEL, "degraded", "datapath sync failed", 1700000000.5)
ENTRY = IpcacheRecord(ipaddress.ip_address("10.200.1.7"), 12345, "node-a", ipaddress.IPv4Address("192.0.2.1"),
                      ipaddress.IPv6Address("2001:db8::1"), "default", "web-0")


def test_round_trips() -> None:
    assert codec.decode_node(codec.node_key("node-a"), codec.encode_node(NODE)) == NODE
    assert codec.decode_ipcache(codec.ipcache_key(ENTRY.ip), codec.encode_ipcache(ENTRY)) == ENTRY
    v6 = IpcacheRecord(ipaddress.ip_address("fd00:200:0:1::7"), 300, "node-a", None)
    assert codec.decode_ipcache(codec.ipcache_key(v6.ip), codec.encode_ipcache(v6)) == v6
    cidr = ipaddress.ip_network("fd00:200:0:1::/64")
    assert codec.podcidr_key(cidr) == "cilia/podcidrs/v6/fd00:200:0:1::_64"
    assert codec.decode_claim(codec.podcidr_key(cidr), codec.encode_claim("node-a")) == (cidr, "node-a")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("cilia/nodes/node-a", b"", "not JSON"),
    ("cilia/nodes/node-a", b"[1]", "not a JSON object"),
    ("cilia/nodes/node-b", None, "does not match the key"),
    ("cilia/nodes/", None, "not a key under"),
    ("cilia/nodes/a/b", None, "not a valid name"),
    ("cilia/ipcache/10.0.0.300", None, "not an IP address"),
    ("cilia/ipcache/10.200.1.8", None, "does not match the key"),
    ("cilia/podcidrs/v4/10.0.0.1_24", b'{"node":"a"}', "host bits set"),
    ("cilia/podcidrs/v6/10.0.0.0_24", b'{"node":"a"}', "under v6"),
    ("cilia/podcidrs/v4/10.0.0.0-24", b'{"node":"a"}', "not a claim key"),
    ("cilia/podcidrs/v4/10.0.0.0_24", b'{"node":""}', "not a valid name"),
])
def test_garbage_names_the_key(key: str, value: bytes | None, message: str) -> None:
    decoder = (codec.decode_node if key.startswith(codec.NODES_PREFIX) else
               codec.decode_ipcache if key.startswith(codec.IPCACHE_PREFIX) else codec.decode_claim)
    if value is None:
        value = codec.encode_node(NODE) if decoder is codec.decode_node else codec.encode_ipcache(ENTRY)
    with pytest.raises(RecordError, match=message) as info:
        decoder(key, value)
    assert key in str(info.value)


@pytest.mark.parametrize(("field", "bad"), [
    ("routing_mode", "vxlan"), ("health", "fine"), ("pod_cidrs", "10.0.0.0/24"), ("pod_cidrs", ["10.0.0.1/24"]),
    ("ipv4", "2001:db8::1"), ("ipv6", 7), ("updated", float("inf")), ("updated", True), ("name", None),
])
def test_bad_node_fields(field: str, bad: Any) -> None:
    doc = json.loads(codec.encode_node(NODE))
    doc[field] = bad
    with pytest.raises(RecordError, match=field if field != "name" else "does not match"):
        codec.decode_node("cilia/nodes/node-a", json.dumps(doc).encode())


@pytest.mark.parametrize(("field", "bad"), [
    ("identity", 0), ("identity", True), ("identity", "5"), ("identity", 2**32), ("node", "a/b"), ("node", 3),
    ("node_ipv4", "fd00::1"), ("pod", None),
])
def test_bad_ipcache_fields(field: str, bad: Any) -> None:
    doc = json.loads(codec.encode_ipcache(ENTRY))
    doc[field] = bad
    with pytest.raises(RecordError):
        codec.decode_ipcache("cilia/ipcache/10.200.1.7", json.dumps(doc).encode())


def _only_record_errors(decoder: Any, key: str, value: bytes) -> None:
    try:
        decoder(key, value)
    except RecordError as exc:
        assert key in str(exc)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_raw_bytes(value: bytes) -> None:
    _only_record_errors(codec.decode_node, "cilia/nodes/node-a", value)
    _only_record_errors(codec.decode_ipcache, "cilia/ipcache/10.200.1.7", value)
    _only_record_errors(codec.decode_claim, "cilia/podcidrs/v4/10.0.0.0_24", value)


@FUZZ
@given(mutated([json.loads(codec.encode_node(NODE))]))
def test_fuzz_node_documents(doc: Any) -> None:
    _only_record_errors(codec.decode_node, "cilia/nodes/node-a", json.dumps(doc).encode())


@FUZZ
@given(mutated([json.loads(codec.encode_ipcache(ENTRY))]))
def test_fuzz_ipcache_documents(doc: Any) -> None:
    _only_record_errors(codec.decode_ipcache, "cilia/ipcache/10.200.1.7", json.dumps(doc).encode())


@FUZZ
@given(st.text(max_size=60))
def test_fuzz_keys(suffix: str) -> None:
    _only_record_errors(codec.decode_node, "cilia/nodes/" + suffix, codec.encode_node(NODE))
    _only_record_errors(codec.decode_ipcache, "cilia/ipcache/" + suffix, codec.encode_ipcache(ENTRY))
    _only_record_errors(codec.decode_claim, "cilia/podcidrs/" + suffix, codec.encode_claim("a"))


def test_table_logs_and_skips_garbage(caplog: pytest.LogCaptureFixture) -> None:
    changes: list[int] = []
    table: RecordTable[IpcacheRecord] = RecordTable("ipcache", codec.decode_ipcache, lambda: changes.append(1))
    good = codec.ipcache_key(ENTRY.ip)
    with caplog.at_level(logging.WARNING):
        table.apply([("put", good, codec.encode_ipcache(ENTRY)), ("put", "cilia/ipcache/junk", b"{}")], 5)
    assert table.snapshot() == {good: ENTRY}
    assert "cilia/ipcache/junk" in caplog.text
    assert set(table.garbage()) == {"cilia/ipcache/junk"}
    assert changes == [1] and table.revision == 5
    # the same put again changes nothing; garbage over a good record drops it
    assert not table.apply([("put", good, codec.encode_ipcache(ENTRY))])
    assert table.apply([("put", good, b"not json")])
    assert table.snapshot() == {}
    table.apply([("delete", "cilia/ipcache/junk", b""), ("delete", good, b"")])
    assert table.garbage() == {}
