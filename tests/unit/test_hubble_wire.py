"""The fast path (cilia.hubble.wire: record -> GetFlowsResponse bytes) against the slow path it
stands for (record -> decode -> FlowBuilder.build -> convert -> GetFlowsResponse), the reference:
for generated records the bytes must parse to exactly the slow path's message."""

from __future__ import annotations

import contextlib
import struct
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.test_hubble_convert import RULES, SERVICES, VIEWS, icmp6_echo, record, tcp_v4, udp_v4

from cilia.flows.build import EndpointView, Flow, FlowBuilder
from cilia.flows.ring import FlowRing
from cilia.hubble.convert import convert
from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc
from cilia.hubble.server import FollowBudget, HubbleConfig, HubbleServer, _response
from cilia.hubble.wire import WireEncoder, WireMask, policy_message, varint
from cilia.monitor.events import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_SOCK, EVENT_TRACE, DecodeError, decode
from cilia.testing import wait_for

BOOT_NS = 1_700_000_000 * 10**9 + 123_456_789
V6_CLIENT = "fd00::2"
VIEWS6 = {**VIEWS, V6_CLIENT: EndpointView(11, 300, "y", "six", ["k8s:app=six", "reserved:host="])}
RULES_ALL = {**RULES, 6: {"kind": "CiliumClusterwideNetworkPolicy", "namespace": "", "name": "ccnp",
                          "rule": "egress[1]", "id": 6, "revision": 4}}
LABELS = {2: ["reserved:world="], 1: ["reserved:host"], 300: ["k8s:io.cilium.k8s.policy.cluster=c1", "k8s:a=b"]}


# the endpoints' DNS history (cilia.fqdn.history): an external address named for two of them
NAMES = {(7, "192.168.5.1"): ["api.example.test", "www.example.test"], (9, "192.168.5.1"): ["other.example.test"],
         (7, "10.0.0.9"): ["db.example.test"], (11, "2001:db8:1::1"): ["six.example.test"]}


def identities(identity: int) -> list[str]:
    return list(LABELS.get(identity, []))


def names_of(endpoint_id: int, ip: str) -> list[str]:
    return list(NAMES.get((endpoint_id, ip), []))


def slow(raw: bytes, flow_id: str) -> observer_pb2.GetFlowsResponse:
    builder = FlowBuilder("n1", VIEWS6.get, identities, BOOT_NS, RULES_ALL.get, SERVICES.get, names=names_of)
    return _response(convert(builder.build(decode(raw), VIEWS6.get, flow_id)), None)


ENCODER = WireEncoder("n1", identities, BOOT_NS, RULES_ALL.get, SERVICES.get, names_of)


def fast(raw: bytes, flow_id: str) -> observer_pb2.GetFlowsResponse | None:
    wire = ENCODER.encode(raw, flow_id, VIEWS6.get)
    return None if wire is None else observer_pb2.GetFlowsResponse.FromString(wire)


def v6_tcp(flags: int, sport: int, dport: int, src: bytes, dst: bytes, proto: int = 6) -> bytes:
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, 20, proto, 64, src, dst)
    return (bytes.fromhex("020000000002020000000001") + b"\x86\xdd" + ip6
            + struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 65535, 0, 0))


def v4(proto: int, l4: bytes, src: str, dst: str, ihl: int = 5) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return (bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + b"\0" * (ihl * 4 - 20) + l4)


ADDRESSES = st.sampled_from(["10.200.1.2", "10.200.1.3", "10.0.0.9", "192.168.5.1", "10.96.0.10"])
V6_ADDRESSES = st.sampled_from([bytes.fromhex("fd000000000000000000000000000002"),
                                bytes.fromhex("fd000000000000000000000000000003"),
                                bytes.fromhex("20010db8000000010000000000000001"),
                                bytes.fromhex("00000000000000000000ffff0a000001")])
PORT = st.integers(0, 65535)


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "sctp", "other", "tcp6", "icmp6", "udp6", "arp",
                                 "short", "random", "fixture"]))
    if kind == "tcp":
        l4 = struct.pack("!HHIIBBHHH", draw(PORT), draw(PORT), 1, 0, 0x50, draw(st.integers(0, 255)), 1, 0, 0)
        packet = v4(6, l4, draw(ADDRESSES), draw(ADDRESSES), draw(st.sampled_from([5, 6])))
    elif kind in ("udp", "sctp"):
        packet = v4(17 if kind == "udp" else 132, struct.pack("!HHHH", draw(PORT), draw(PORT), 8, 0),
                    draw(ADDRESSES), draw(ADDRESSES))
    elif kind == "icmp":
        packet = v4(draw(st.sampled_from([1, 58])), bytes([draw(st.integers(0, 255)), draw(st.integers(0, 255))])
                    + b"\0\0\0\0\0\0", draw(ADDRESSES), draw(ADDRESSES))
    elif kind == "other":
        packet = v4(draw(st.integers(0, 255)), b"\0" * 20, draw(ADDRESSES), draw(ADDRESSES))
    elif kind in ("tcp6", "udp6", "icmp6"):
        proto = {"tcp6": 6, "udp6": 17, "icmp6": draw(st.sampled_from([58, 1]))}[kind]
        packet = v6_tcp(draw(st.integers(0, 255)), draw(PORT), draw(PORT), draw(V6_ADDRESSES),
                        draw(V6_ADDRESSES), proto)
    elif kind == "arp":
        packet = bytes.fromhex("ffffffffffff020000000001") + b"\x08\x06" + b"\0" * 28
    elif kind == "short":
        packet = b""
    elif kind == "random":
        packet = draw(st.binary(max_size=128))
    else:
        packet = draw(st.sampled_from([tcp_v4(), udp_v4(), icmp6_echo(), tcp_v4(0x12, "10.200.1.3", "10.200.1.2",
                                                                                  80, 40000)]))
    if draw(st.booleans()):
        packet = packet[: draw(st.integers(0, len(packet)))]  # a capture cut anywhere
    return packet


@st.composite
def records(draw: st.DrawFn) -> bytes:
    packet = draw(packets())
    etype = draw(st.sampled_from([EVENT_TRACE, EVENT_DROP, EVENT_POLICY_VERDICT]))
    subtype = draw(st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 130, 133, 137, 143, 158, 181, 220, 0x81,
                                              0x82, 0x83]), st.integers(0, 255)))
    header = struct.pack(
        "<QBBBBHHIIIIHHI", draw(st.integers(0, 10**15)), etype, subtype, draw(st.integers(0, 6)),
        draw(st.integers(0, 6)), draw(st.integers(0, 65535)), draw(st.integers(0, 65535)),
        draw(st.sampled_from([0, 4, 70000])), draw(st.sampled_from([0, 1, 2, 256, 257, 300, 99999])),
        draw(st.sampled_from([0, 1, 2, 256, 257, 300])), len(packet),
        draw(st.one_of(st.just(len(packet)), st.integers(0, 200))), draw(st.sampled_from([0, 1, 2, 7])),
        draw(st.sampled_from([0, 3, 5, 6, 9])))
    return header + packet.ljust(128, b"\0")


@settings(max_examples=1500, deadline=None)
@given(records(), st.sampled_from(["", "00000000-0000-4000-8000-00000000002a", "x" * 40]))
def test_the_fast_path_gives_the_slow_paths_message(raw: bytes, flow_id: str) -> None:
    got = fast(raw, flow_id or "uuid-1")
    want = slow(raw, flow_id or "uuid-1")
    assert got is not None and got == want, f"fast:\n{got}\nslow:\n{want}"


def ports_at(raw: bytes) -> int | None:
    """Where a TCP / UDP packet's ports are in its record (None: not such a packet, or cut short)."""
    end = min(len(raw), 40 + struct.unpack_from("<H", raw, 32)[0])
    if end >= 74 and raw[52:54] == b"\x08\x00":
        at, proto = 54 + (raw[54] & 0x0F) * 4, raw[63]
    elif end >= 94 and raw[52:54] == b"\x86\xdd":
        at, proto = 94, raw[60]
    else:
        return None
    return at if (proto == 6 and end >= at + 14) or (proto == 17 and end >= at + 4) else None


def another_packet(raw: bytes, ktime: int, sport: int, dport: int) -> bytes:
    """The record with another time, other ports (if it has them) and other bytes no field is made
    of (lengths, the IP header's id, TCP's sequence number): the same shape."""
    out = bytearray(raw)
    struct.pack_into("<Q", out, 0, ktime)
    struct.pack_into("<I", out, 28, 9999)  # orig_len
    at = ports_at(raw)
    if at is not None:
        struct.pack_into("!HH", out, at, sport, dport)
        if len(out) >= at + 8:
            out[at + 4: at + 8] = b"\x12\x34\x56\x78"  # TCP's sequence number, UDP's length + checksum
        if raw[52:54] == b"\x08\x00":
            out[58:60] = b"\xbe\xef"  # the IP header's id
    return bytes(out)


@settings(max_examples=600, deadline=None)
@given(records(), st.integers(0, 10**15), PORT, PORT)
def test_a_cached_shape_gives_the_slow_paths_message(raw: bytes, ktime: int, sport: int, dport: int) -> None:
    """A record of a shape met before is served from the cache: the slow path's message for it, and
    byte for byte what a fresh encoder (nothing cached) gives."""
    encoder = WireEncoder("n1", identities, BOOT_NS, RULES_ALL.get, SERVICES.get, names_of)
    first = encoder.encode(raw, "u1", VIEWS6.get)
    shapes = len(encoder._tcp_shapes) + len(encoder._udp_shapes)
    assert shapes == (0 if ports_at(raw) is None or (raw[8] == EVENT_TRACE and raw[36:40] != bytes(4)) else 1)
    other = another_packet(raw, ktime, sport, dport)
    got = encoder.encode(other, "u2", VIEWS6.get)
    assert len(encoder._tcp_shapes) + len(encoder._udp_shapes) == shapes  # the same shape: no new entry
    fresh = WireEncoder("n1", identities, BOOT_NS, RULES_ALL.get, SERVICES.get, names_of).encode(other, "u2",
                                                                                               VIEWS6.get)
    assert first is not None and got is not None and got == fresh
    assert observer_pb2.GetFlowsResponse.FromString(got) == slow(other, "u2")


SHAPE_FIELDS: dict[str, list[Any]] = {  # a few values for each thing a record's shape is made of
    "packet": ["tcp", "tcp-back", "tcp-world", "udp", "tcp6", "udp6"], "mac": [5, 9], "src_mac": [1, 3],
    "flags": [0x02, 0x12, 0x10],
    "etype": [EVENT_TRACE, EVENT_DROP, EVENT_POLICY_VERDICT], "subtype": [0, 1, 3, 133, 0x81], "file": [0, 1],
    "ct": [0, 3], "line": [0, 7], "ifindex": [0, 4], "src_id": [256, 2, 1], "dst_id": [257, 2, 99],
    "direction": [0, 1], "slot": [0, 3, 5, 6]}


def shaped(fields: dict[str, Any], ktime: int, sport: int, dport: int) -> bytes:
    flags = fields["flags"]
    v6_src = bytes.fromhex("fd000000000000000000000000000002")
    v6_dst = bytes.fromhex("20010db8000000010000000000000001")
    packet = {"tcp": lambda: tcp_v4(flags, sport=sport, dport=dport),
              "tcp-back": lambda: tcp_v4(flags, "10.200.1.3", "10.200.1.2", sport, dport),
              "tcp-world": lambda: tcp_v4(flags, "10.200.1.2", "192.168.5.1", sport, dport),
              "udp": lambda: v4(17, struct.pack("!HHHH", sport, dport, 8, 0), "10.200.1.2", "10.200.1.3"),
              "tcp6": lambda: v6_tcp(flags, sport, dport, v6_src, v6_dst),
              "udp6": lambda: v6_tcp(flags, sport, dport, v6_src, v6_dst, 17)}[fields["packet"]]()
    packet = packet[:5] + bytes([fields["mac"]]) + packet[6:11] + bytes([fields["src_mac"]]) + packet[12:]
    header = struct.pack("<QBBBBHHIIIIHHI", ktime, fields["etype"], fields["subtype"], fields["file"], fields["ct"],
                         fields["line"], 7, fields["ifindex"], fields["src_id"], fields["dst_id"], len(packet),
                         len(packet), fields["direction"], fields["slot"])
    return header + packet.ljust(128, b"\0")


@st.composite
def close_records(draw: st.DrawFn) -> list[bytes]:
    """A record and others that differ from it in one of the things its shape is made of (a cache
    entry of the first would be wrong for them if the shape's key left that out), or in none."""
    base = {name: draw(st.sampled_from(values)) for name, values in SHAPE_FIELDS.items()}
    out = [shaped(base, draw(st.integers(0, 10**15)), draw(PORT), draw(PORT))]
    for name in draw(st.lists(st.sampled_from([*SHAPE_FIELDS, "none"]), min_size=1, max_size=6)):
        other = dict(base)
        if name != "none":
            other[name] = draw(st.sampled_from(SHAPE_FIELDS[name]))
        out.append(shaped(other, draw(st.integers(0, 10**15)), draw(PORT), draw(PORT)))
    return out


@settings(max_examples=800, deadline=None)
@given(close_records())
def test_records_of_close_shapes_each_get_the_slow_paths_message(raws: list[bytes]) -> None:
    encoder = WireEncoder("n1", identities, BOOT_NS, RULES_ALL.get, SERVICES.get, names_of)
    for raw in raws:
        got = encoder.encode(raw, "u", VIEWS6.get)
        want = slow(raw, "u")
        assert got is not None and observer_pb2.GetFlowsResponse.FromString(got) == want


@pytest.mark.parametrize("batched", [False, True])
def test_a_shape_is_made_again_when_its_lookups_change(batched: bool) -> None:
    """Everything a cached shape was made of besides the record is looked up again for every flow
    (batched: every batch, encode_many): an endpoint's view (replaced), an identity's labels, DNS
    names and the rule (even changed in place)."""
    views: dict[str, EndpointView] = dict(VIEWS6)
    labels: dict[int, list[str]] = {k: list(v) for k, v in LABELS.items()}
    names: dict[tuple[int, str], list[str]] = {k: list(v) for k, v in NAMES.items()}
    rules: dict[int, dict[str, Any]] = {k: dict(v) for k, v in RULES_ALL.items()}

    def check(raw: bytes) -> observer_pb2.GetFlowsResponse:
        if batched:  # the record twice in a batch: the second is not checked again, the same bytes
            first, encoder_out = encoder.encode_many([raw, raw], ["u", "u"], views.get)
            assert first == encoder_out
        else:
            encoder_out = encoder.encode(raw, "u", views.get)
        builder = FlowBuilder("n1", views.get, lambda i: list(labels.get(i, [])), BOOT_NS, rules.get, SERVICES.get,
                              names=lambda e, ip: list(names.get((e, ip), [])))
        want = _response(convert(builder.build(decode(raw), views.get, "u")), None)
        got = observer_pb2.GetFlowsResponse.FromString(encoder_out or b"")
        assert got == want, f"fast:\n{got}\nslow:\n{want}"
        return got

    encoder = WireEncoder("n1", lambda i: list(labels.get(i, [])), BOOT_NS, rules.get, SERVICES.get,
                          lambda e, ip: list(names.get((e, ip), [])))
    pods = record(EVENT_TRACE, 1, tcp_v4())
    assert check(pods).flow.source.pod_name == "client"
    views["10.200.1.2"] = EndpointView(7, 256, "x", "renamed", ["k8s:app=client"])
    assert check(pods).flow.source.pod_name == "renamed"
    del views["10.200.1.2"]  # the endpoint is gone: its identity's labels now
    assert check(pods).flow.source.pod_name == ""
    labels[256] = ["k8s:app=later"]
    assert list(check(pods).flow.source.labels) == ["k8s:app=later"]
    world = record(EVENT_TRACE, 1, tcp_v4(src="10.200.1.3", dst="192.168.5.1"), src_id=257, dst_id=2)
    assert list(check(world).flow.destination_names) == ["other.example.test"]
    names[(9, "192.168.5.1")] = ["new.example.test"]
    assert list(check(world).flow.destination_names) == ["new.example.test"]
    labels[2] = ["reserved:world", "cidr:192.168.5.0/24"]
    assert "cidr:192.168.5.0/24" in check(world).flow.destination.labels
    verdict = record(EVENT_POLICY_VERDICT, 1, tcp_v4(), rule_id=5, direction=0)
    assert check(verdict).flow.ingress_allowed_by[0].name == "deny-client"
    rules[5]["name"] = "renamed-in-place"
    assert check(verdict).flow.ingress_allowed_by[0].name == "renamed-in-place"
    del rules[5]
    assert not check(verdict).flow.ingress_allowed_by
    assert len(encoder._tcp_shapes) == 3  # one a shape: remade, not added


@settings(max_examples=500, deadline=None)
@given(close_records(), st.lists(records(), max_size=6), st.randoms(use_true_random=False))
def test_a_batch_is_encoded_as_each_record_alone(close: list[bytes], others: list[bytes], rng: Any) -> None:
    """encode_many (a shape's lookups checked once a batch) gives, byte for byte, what a fresh
    encoder gives each record alone, for a batch of close shapes, others, and repeats."""
    raws = close + others + close
    rng.shuffle(raws)
    ids = [f"u{n}" for n in range(len(raws))]
    encoder = WireEncoder("n1", identities, BOOT_NS, RULES_ALL.get, SERVICES.get, names_of)
    for _ in range(2):  # shapes made in the batch, then all met before
        got = encoder.encode_many(raws, ids, VIEWS6.get)
        for raw, flow_id, data in zip(raws, ids, got, strict=True):
            alone = WireEncoder("n1", identities, BOOT_NS, RULES_ALL.get, SERVICES.get, names_of)
            assert data == alone.encode(raw, flow_id, VIEWS6.get)


def test_fixed_records_of_every_kind() -> None:
    cases = [record(EVENT_TRACE, 1, tcp_v4()), record(EVENT_TRACE, 3, udp_v4(), ct=3),
             record(EVENT_DROP, 133, tcp_v4(), direction=0, line=77),
             record(EVENT_DROP, 220, tcp_v4(), direction=0), record(EVENT_DROP, 199, udp_v4()),
             record(EVENT_POLICY_VERDICT, 1, tcp_v4(), rule_id=5, direction=0),
             record(EVENT_POLICY_VERDICT, 0x82, tcp_v4(), rule_id=5, direction=0),
             record(EVENT_POLICY_VERDICT, 3, icmp6_echo()), record(EVENT_POLICY_VERDICT, 1, tcp_v4(), src_id=1),
             record(EVENT_POLICY_VERDICT, 1, tcp_v4(), rule_id=6),
             record(EVENT_TRACE, 1, tcp_v4(), rule_id=3),  # service 3: a request to its backend
             record(EVENT_TRACE, 1, tcp_v4(src="10.96.0.10", dst="10.200.1.2", sport=80, dport=40000), rule_id=3),
             record(EVENT_TRACE, 1, tcp_v4(), rule_id=4)]  # no such service
    for raw in cases:
        got, want = fast(raw, "u"), slow(raw, "u")
        assert got is not None and got == want, f"fast:\n{got}\nslow:\n{want}"
        assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)


def test_names_of_each_side_from_the_other_sides_dns_history() -> None:
    out = record(EVENT_TRACE, 1, tcp_v4(src="10.200.1.2", dst="192.168.5.1", sport=40000, dport=80))
    back = record(EVENT_TRACE, 1, tcp_v4(0x12, "192.168.5.1", "10.200.1.3", 80, 40000))
    for raw, field, names in ((out, "destination_names", ["api.example.test", "www.example.test"]),
                              (back, "source_names", ["other.example.test"])):
        got, want = fast(raw, "u"), slow(raw, "u")
        assert got is not None and got == want
        assert list(getattr(got.flow, field)) == names
        assert not got.flow.source_names if field == "destination_names" else not got.flow.destination_names
    plain = fast(record(EVENT_TRACE, 1, tcp_v4()), "u")  # pod to pod: nobody's DNS history names them
    assert plain is not None and not plain.flow.source_names and not plain.flow.destination_names


def test_left_to_the_slow_path() -> None:
    assert fast(bytes([0] * 8 + [EVENT_SOCK]) + b"\0" * 100, "u") is None
    assert fast(b"\0" * 10, "u") is None
    assert fast(record(9, 0, tcp_v4()), "u") is None  # not a type decode knows: the slow path reports it


def test_a_changed_endpoint_view_is_not_served_from_the_cache() -> None:
    raw = record(EVENT_TRACE, 1, tcp_v4())
    views = dict(VIEWS6)
    first = ENCODER.encode(raw, "u", views.get)
    views["10.200.1.2"] = EndpointView(7, 256, "x", "renamed", ["k8s:app=client"])
    second = observer_pb2.GetFlowsResponse.FromString(ENCODER.encode(raw, "u", views.get) or b"")
    assert first is not None and second.flow.source.pod_name == "renamed"


def test_varints_and_policies() -> None:
    assert [varint(n) for n in (0, 1, 127, 128, 300, 16384, 2**32)] == [
        b"\0", b"\1", b"\x7f", b"\x80\x01", b"\xac\x02", b"\x80\x80\x01", b"\x80\x80\x80\x80\x10"]
    assert policy_message({}) == b""


class Context:
    """A RecordContext like the event pump's: the slow path's builder and the fast path's encoder."""

    def __init__(self, fast_path: bool = True) -> None:
        self.builder = FlowBuilder("n1", VIEWS6.get, identities, BOOT_NS, RULES_ALL.get, SERVICES.get)
        self.fast_path = fast_path
        self.encoded = 0

    def build(self, raw: bytes, flow_id: str) -> Flow | None:
        try:
            return self.builder.build(decode(raw), VIEWS6.get, flow_id)
        except DecodeError:
            return None

    def encode(self, raw: bytes, flow_id: str) -> bytes | None:
        if not self.fast_path:
            return None
        self.encoded += 1
        return ENCODER.encode(raw, flow_id, VIEWS6.get)


RECORDS = [record(EVENT_TRACE, 1, tcp_v4()), record(EVENT_DROP, 133, tcp_v4(), direction=0),
           record(EVENT_POLICY_VERDICT, 1, udp_v4(), rule_id=5, direction=0),
           record(EVENT_TRACE, 1, tcp_v4(), rule_id=3),  # a service's
           b"\0" * 12,  # undecodable: skipped
           record(EVENT_TRACE, 3, icmp6_echo(), ct=2)]


def serve(ring: FlowRing, tmp_path: Path) -> HubbleServer:
    server = HubbleServer(HubbleConfig("n1", tmp_path / "hubble.sock", 64), ring)
    server.start()
    return server


def get_flows(server: HubbleServer, **request: Any) -> list[observer_pb2.GetFlowsResponse]:
    with grpc.insecure_channel(f"unix://{server.config.socket}") as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]
        return list(stub.GetFlows(observer_pb2.GetFlowsRequest(**request), timeout=5))


def test_record_entries_are_served_as_the_slow_path_would(tmp_path: Path) -> None:
    fast_ring, slow_ring = FlowRing(64), FlowRing(64)
    context = Context()
    fast_ring.add_records(RECORDS, context)
    slow_ring.add_records(RECORDS, Context(fast_path=False))
    fast_server, slow_server = serve(fast_ring, tmp_path / "f"), serve(slow_ring, tmp_path / "s")
    try:
        got, want = get_flows(fast_server, number=10), get_flows(slow_server, number=10)
        assert len(got) == 5 and context.encoded == 6  # the undecodable record is not served
        for a, b in zip(got, want, strict=True):  # the uuids differ (each ring has its own prefix)
            assert a.flow.uuid[:24] == fast_ring.entries()[0].flow_id[:24] and len(a.flow.uuid) == 36
            b.flow.uuid = a.flow.uuid
            assert a == b
        # the uuid a client sees is the flow dict's, whoever built it first
        assert [e.get()["uuid"] for e in fast_ring.entries() if e.get()] == [r.flow.uuid for r in got]
        # filters and field masks work on the parsed bytes
        drops = get_flows(fast_server, number=10, whitelist=[flow_pb2.FlowFilter(verdict=[flow_pb2.DROPPED])])
        assert [r.flow.verdict for r in drops] == [flow_pb2.DROPPED]
        masked = get_flows(fast_server, number=1, field_mask=FieldMask(paths=["verdict", "source.pod_name"]))
        assert masked[0].flow == flow_pb2.Flow(verdict=flow_pb2.FORWARDED, source=flow_pb2.Endpoint(pod_name="six"))
    finally:
        fast_server.stop(0)
        slow_server.stop(0)


class BatchContext(Context):
    """The pump's context with its batch path (encode_many), as the Hubble server's follower uses it."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def encode_many(self, raws: list[bytes], flow_ids: list[str]) -> list[bytes | None]:
        self.batches.append(len(raws))
        return ENCODER.encode_many(raws, flow_ids, VIEWS6.get)


@pytest.mark.parametrize("batched", [False, True])
def test_a_follower_gets_new_record_batches_once(tmp_path: Path, batched: bool) -> None:
    ring = FlowRing(64)
    make: Any = BatchContext if batched else Context
    ring.add_records(RECORDS[:2], make())
    server = serve(ring, tmp_path)
    got: list[observer_pb2.GetFlowsResponse] = []
    try:
        with grpc.insecure_channel(f"unix://{server.config.socket}") as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]
            stream = stub.GetFlows(observer_pb2.GetFlowsRequest(number=1, follow=True), timeout=10)

            def read() -> None:
                with contextlib.suppress(grpc.RpcError):
                    got.extend(stream)

            reader = threading.Thread(target=read)
            reader.start()
            wait_for(lambda: len(got) == 1, timeout=5)
            context = make()
            ring.add_records(RECORDS[2:], context)
            wait_for(lambda: len(got) == 4, timeout=5)
            stream.cancel()
            reader.join(5)
    finally:
        server.stop(0)
    entries = ring.entries()
    assert [r.flow.uuid for r in got] == [entries[i].flow_id for i in (1, 2, 3, 5)]
    assert got[3].flow.l4.WhichOneof("protocol") == "ICMPv6"
    assert [r.SerializeToString() for r in got[1:]] == [slow(RECORDS[i], entries[i].flow_id).SerializeToString()
                                                        for i in (2, 3, 5)]
    if batched:  # the followed batch went to encode_many at once (the history's record alone)
        assert context.batches == [len(RECORDS) - 2]


MASK_PATHS = ["time", "time.seconds", "uuid", "verdict", "drop_reason", "drop_reason_desc", "ethernet",
              "ethernet.source", "IP", "IP.source", "IP.destination", "IP.ipVersion", "l4", "l4.TCP",
              "l4.TCP.flags", "l4.TCP.flags.SYN", "l4.UDP", "l4.UDP.source_port", "l4.ICMPv4", "l4.ICMPv6.type",
              "source", "source.identity", "source.namespace", "source.pod_name", "source.labels",
              "source.workloads", "source.cluster_name", "destination.identity", "destination.pod_name",
              "destination.labels", "Type", "node_name", "is_reply", "is_reply.value", "reply", "event_type",
              "event_type.sub_type", "source_service", "destination_service.name", "traffic_direction",
              "trace_observation_point", "trace_reason", "interface", "interface.index", "file.name",
              "egress_allowed_by", "ingress_denied_by", "Summary", "l7", "l7.http", "emitter.name",
              "policy_match_type", "tunnel", "aggregate"]
# hubble observe's own mask for compact, dict and table output (its defaults.FieldMask)
CLI_MASK = ["time", "source.identity", "source.namespace", "source.pod_name", "destination.identity",
            "destination.namespace", "destination.pod_name", "source_service", "destination_service", "l4",
            "IP", "ethernet", "l7", "Type", "node_name", "is_reply", "event_type", "verdict", "drop_reason_desc",
            "Summary", "traffic_direction", "trace_observation_point", "policy_match_type", "interface"]


@settings(max_examples=600, deadline=None)
@given(records(), st.lists(st.sampled_from(MASK_PATHS), min_size=1, max_size=8))
def test_a_field_mask_on_the_bytes_gives_merge_messages_result(raw: bytes, paths: list[str]) -> None:
    wire = ENCODER.encode(raw, "uuid-1", VIEWS6.get)
    assert wire is not None
    mask = FieldMask(paths=paths)
    assert mask.IsValidForDescriptor(flow_pb2.Flow.DESCRIPTOR)
    want = _response(observer_pb2.GetFlowsResponse.FromString(wire).flow, mask)
    got = observer_pb2.GetFlowsResponse.FromString(WireMask(paths).apply(wire))
    assert got == want, f"mask {paths}\nfast:\n{got}\nslow:\n{want}"
    assert got.HasField("time") and got.HasField("flow")


def test_the_cli_mask_on_the_bytes() -> None:
    for raw in RECORDS:
        wire = ENCODER.encode(raw, "uuid-1", VIEWS6.get)
        if wire is None:
            continue
        want = _response(observer_pb2.GetFlowsResponse.FromString(wire).flow, FieldMask(paths=CLI_MASK))
        assert observer_pb2.GetFlowsResponse.FromString(WireMask(CLI_MASK).apply(wire)) == want


def test_a_follow_budget_is_paid_in_cpu_time_only() -> None:
    wall, cpu = [0.0], [0.0]
    budget = FollowBudget(0.1, lambda: wall[0], lambda: cpu[0])
    wall[0] = 1.0
    budget.start()
    wall[0], cpu[0] = 5.0, 0.05  # a slow client: 4 s of waiting, 50 ms of CPU
    assert not budget.spent()
    cpu[0] = 0.1
    assert budget.spent()


def test_a_follow_budget_grows_with_time_and_is_paid_by_serving() -> None:
    now = [0.0]
    budget = FollowBudget(0.1, lambda: now[0], lambda: now[0])  # a thread that only serves: CPU = wall
    now[0] = 1.0
    budget.start()  # a second passed: 0.1 s to spend (never more than a second's worth)
    now[0] = 1.05
    assert not budget.spent()
    now[0] = 1.1
    assert budget.spent()
    budget.stop()
    now[0] = 1.5
    budget.start()  # 0.5 s more: 0.05 s
    now[0] = 1.54
    assert not budget.spent()
    now[0] = 1.55
    assert budget.spent()
    budget.stop()
    now[0] = 100.0
    budget.start()
    now[0] = 100.11
    assert budget.spent()  # capped at 0.1 s


class _Spent(FollowBudget):
    def spent(self) -> bool:
        return True


def test_a_follower_over_its_budget_is_told_what_it_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cilia.hubble.server.FollowBudget", _Spent)  # a budget always spent, whatever the clocks
    ring = FlowRing(64)
    server = HubbleServer(HubbleConfig("n1", tmp_path / "hubble.sock", 64, follow_budget=0.01), ring)
    server.start()
    got: list[observer_pb2.GetFlowsResponse] = []
    try:
        with grpc.insecure_channel(f"unix://{server.config.socket}") as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]
            stream = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True), timeout=10)

            def read() -> None:
                with contextlib.suppress(grpc.RpcError):
                    got.extend(stream)

            reader = threading.Thread(target=read)
            reader.start()
            wait_for(lambda: len(server.source.ring._entry_subscribers) == 1, timeout=5)
            ring.add_records(RECORDS, Context())
            wait_for(lambda: sum(r.lost_events.num_events_lost for r in got) == len(RECORDS), timeout=5)
            stream.cancel()
            reader.join(5)
    finally:
        server.stop(0)
    assert not any(r.HasField("flow") for r in got)
    assert {r.lost_events.source for r in got} == {flow_pb2.HUBBLE_RING_BUFFER}


def test_the_follow_budget_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from cilia.agent.config import parse_config

    pods = ["--ipv4-pod-cidr", "10.200.1.0/24"]
    assert HubbleConfig.from_agent(parse_config(pods)).follow_budget is None
    assert HubbleConfig.from_agent(parse_config([*pods, "--hubble-follow-cpu-budget", "0.05"])).follow_budget == 0.05
    for bad in ("1.5", "-0.1", "x"):
        with pytest.raises(SystemExit):
            parse_config([*pods, "--hubble-follow-cpu-budget", bad])
        assert "argument --hubble-follow-cpu-budget" in capsys.readouterr().err
