"""The fast path from a datapath record to the bytes of Hubble's GetFlowsResponse.

The slow path builds a cilia flow dict (cilia.flows.build), converts it to a flow.Flow message
(cilia.hubble.convert) and serializes it: ~100 µs of Python a flow. Here a trace, drop or policy
verdict record is encoded straight into protobuf wire format (proto3's encoding is stable: tag,
varint, length-delimited), with what repeats cached: for a TCP or UDP record, all of the flow
but its ports, time and uuid by the record's shape (WireEncoder.encode), and below that each
endpoint's sub-message (per endpoint view, per identity and its labels), the message's constant
fields (emitter, type, node name), address texts. It gives exactly what the slow path's message
gives for the same record and lookups (tests/unit/test_hubble_wire.py parses both, for generated
records, cached shapes and changed lookups); the slow path stays
the reference and serves everything this does not: socket translations, L7 and any flow added as
a dict.

`encode` returns None for a record it leaves to the slow path, and also for one the slow path
could not decode (the caller then tries the slow path, which reports it)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable
from math import modf
from typing import Any

from cilia import __version__
from cilia.flows.build import _OBS_TO_HUBBLE as OBS_TO_HUBBLE  # the slow path's table: one source
from cilia.flows.build import EndpointLookup, EndpointView, IdentityLookup, NameLookup, RuleLookup, ServiceLookup
from cilia.flows.shape import Shape
from cilia.hostport import host_port
from cilia.hubble.convert import DROP_REASONS, EMITTER, POLICY_VERDICT_DROP_REASONS, TRACE_POINTS
from cilia.hubble.pb import flow_pb2
from cilia.identity.labels import CLUSTER_LABEL
from cilia.identity.reserved import ReservedIdentity
from cilia.monitor.events import (
    CT_STATUS,
    EVENT_DROP,
    EVENT_POLICY_VERDICT,
    EVENT_TRACE,
    HEADER_SIZE,
    OBSERVATION_POINTS,
    SOURCE_FILES,
    VERDICT_AUDIT_FLAG,
    VERDICTS,
    DropReason,
    PolicyVerdict,
)
from cilia.monitor.events import (
    DROP_REASONS as CILIA_DROP_REASONS,
)

_HEADER = struct.Struct("<QBBBBHHIIIIHHI")
assert _HEADER.size == HEADER_SIZE
_PORTS = struct.Struct("!HH")
_ETHERTYPE = struct.Struct("!H")


# ----- wire format -------------------------------------------------------------------------------
def _varint_slow(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int32/int64: two's complement on 10 bytes, as protobuf
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint_slow(n) for n in range(1 << 14)]
_LOW14 = [bytes(((n & 0x7F) | 0x80, (n >> 7) | 0x80)) for n in range(1 << 14)]  # 14 bits, more to come


def varint(value: int) -> bytes:
    if 0 <= value < 16384:
        return _SMALL[value]
    if 0 < value < 1 << 42:
        if value < 1 << 28:
            return _LOW14[value & 0x3FFF] + _SMALL[value >> 14]
        return _LOW14[value & 0x3FFF] + _LOW14[(value >> 14) & 0x3FFF] + _SMALL[value >> 28]
    return _varint_slow(value)


# every port's varint, filled as ports are seen (all 65,536 made at import would be ~3 MB and
# ~30 ms for every process that imports this)
_PORT_VARINTS: list[bytes] = _SMALL + [b""] * ((1 << 16) - len(_SMALL))


def _port_varint(port: int) -> bytes:
    made = _PORT_VARINTS[port] = varint(port)
    return made


_TAGS: dict[tuple[int, int], bytes] = {}


def tag(number: int, wire_type: int) -> bytes:
    try:
        return _TAGS[number, wire_type]
    except KeyError:
        made = _TAGS[number, wire_type] = varint(number << 3 | wire_type)
        return made


def field_varint(number: int, value: int) -> bytes:
    """A varint field, omitted at its default (0), as proto3 writes it."""
    return tag(number, 0) + varint(value) if value else b""


def field_bytes(number: int, value: bytes) -> bytes:
    """A length-delimited field (string, bytes, sub-message), always written."""
    size = len(value)
    return tag(number, 2) + (_SMALL[size] if size < 16384 else varint(size)) + value


def field_string(number: int, value: str) -> bytes:
    return field_bytes(number, value.encode()) if value else b""


def _t(number: int) -> bytes:
    return tag(number, 2)


# Flow's fields (api/v1/flow/flow.proto)
_TIME, _VERDICT, _DROP_REASON, _ETHERNET, _IP, _L4, _SOURCE, _DESTINATION = 1, 2, 3, 4, 5, 6, 8, 9
_TYPE, _NODE_NAME, _REPLY, _EVENT_TYPE, _DIRECTION, _OBS_POINT = 10, 11, 16, 19, 22, 24
_DROP_REASON_DESC, _IS_REPLY, _INTERFACE, _UUID, _TRACE_REASON, _FILE, _EMITTER = 25, 26, 28, 34, 36, 38, 41
_SOURCE_SERVICE, _DESTINATION_SERVICE = 20, 21
_SOURCE_NAMES, _DESTINATION_NAMES = 13, 14
_SUMMARY = 100000
_POLICY_LISTS = {("egress", True): 21001, ("ingress", True): 21002, ("egress", False): 21004,
                 ("ingress", False): 21005}
# GetFlowsResponse's
_RESPONSE_FLOW, _RESPONSE_NODE_NAME, _RESPONSE_TIME = 1, 1000, 1001
_RESPONSE_FLOW_TAG = _t(_RESPONSE_FLOW)
_RESPONSE_TIME_TAG = _t(_RESPONSE_TIME)
_TIME_TAG = _t(_TIME)
_FIVE_BYTE_NANOS = -(-(1 << 28) // 1000)  # microseconds from which nanos' varint takes five bytes
_UUID_TAG = _t(34)
# (source view, destination view, _extra's: labels of a side with no view, DNS names, the rule)
_Looked = tuple[EndpointView | None, EndpointView | None, tuple[Any, ...] | None]
_NOTHING_ELSE: tuple[Any, ...] = (None, None, (), (), None)
_Shape = tuple[str, str, EndpointView | None, EndpointView | None, tuple[Any, ...] | None, bytes, bytes | None]
_SHAPES = 8192  # shapes kept a protocol (~0.5 KB each; cleared when full): address pairs x points x events
_SOURCE_TAG, _DESTINATION_TAG = _t(8), _t(9)

_FORWARDED = flow_pb2.Verdict.Value("FORWARDED")
_DROPPED = flow_pb2.Verdict.Value("DROPPED")
_AUDIT = flow_pb2.Verdict.Value("AUDIT")
_L3_L4 = flow_pb2.FlowType.Value("L3_L4")
_IPV4 = flow_pb2.IPVersion.Value("IPv4")
_IPV6 = flow_pb2.IPVersion.Value("IPv6")
_IP_VERSION_FIELDS = (field_varint(3, _IPV6), field_varint(3, _IPV4))  # by "is IPv4"
_DIRECTIONS = {0: ("INGRESS", flow_pb2.TrafficDirection.Value("INGRESS")),
               1: ("EGRESS", flow_pb2.TrafficDirection.Value("EGRESS"))}
_UNKNOWN_DIRECTION = ("TRAFFIC_DIRECTION_UNKNOWN", 0)

def _enum_value(enum: Any, name: str) -> int:
    try:
        return int(enum.Value(name))
    except ValueError:
        return 0


def _trace_point(subtype: int) -> tuple[int, int]:
    """(the trace's event sub type, its trace_observation_point value), as build + convert give them."""
    name = OBS_TO_HUBBLE.get(OBSERVATION_POINTS.get(subtype, "UNKNOWN_POINT"), "UNKNOWN_POINT")
    return TRACE_POINTS.get(name, 0), _enum_value(flow_pb2.TraceObservationPoint, name)


_TRACE_POINT = [_trace_point(n) for n in range(256)]
_TRACE_REASONS = [_enum_value(flow_pb2.TraceReason, CT_STATUS.get(n, str(n)).upper() or "TRACE_REASON_UNKNOWN")
                 for n in range(256)]
_ICMP4_NAMES = {0: "EchoReply", 3: "DestinationUnreachable", 8: "EchoRequest", 11: "TimeExceeded"}
_ICMP6_NAMES = {1: "DestinationUnreachable", 3: "TimeExceeded", 128: "EchoRequest", 129: "EchoReply"}
_TCP_FLAG_BITS = ((0x01, "FIN", 1), (0x02, "SYN", 2), (0x04, "RST", 3), (0x08, "PSH", 4), (0x10, "ACK", 5),
                  (0x20, "URG", 6))


def _tcp_flags(bits: int) -> tuple[bytes, str]:
    """The TCPFlags sub-message (field 3 of TCP, always present) and the summary's flag list."""
    body = b"".join(field_varint(number, 1) for bit, _name, number in _TCP_FLAG_BITS if bits & bit)
    names = sorted(name for bit, name, _number in _TCP_FLAG_BITS if bits & bit)
    return field_bytes(3, body), "TCP Flags: " + ", ".join(names)


_TCP_FLAGS = [_tcp_flags(bits) for bits in range(64)]
_UDP = 64  # an L4 kind: 0-63 are TCP with those flags (FIN..URG), 64 is UDP


def _l4_head(kind: int, ports_size: int) -> bytes:
    """The L4 field of a TCP (kind: its flags) or UDP packet up to its source port's varint, for
    ports whose two varints take `ports_size` bytes: [L4 tag, size, TCP/UDP tag, size, port tag]."""
    inner = 2 + ports_size + (len(_TCP_FLAGS[kind][0]) if kind < _UDP else 0)
    return b"\x32" + _SMALL[inner + 2] + (b"\x0a" if kind < _UDP else b"\x12") + _SMALL[inner] + b"\x08"


_L4_HEADS = [[_l4_head(kind, size) for size in range(7)] for kind in range(_UDP + 1)]
_L4_TAILS = [flags for flags, _summary in _TCP_FLAGS] + [b""]  # after the ports: TCP's flags
_FLAGS_SUMMARY = [field_string(_SUMMARY, summary) for _flags, summary in _TCP_FLAGS] + [b""]  # a trace's


def _l4(kind: int, sport: int, dport: int) -> bytes:
    """A TCP or UDP packet's L4 field (both ports written, even 0: the same message)."""
    source, destination = _PORT_VARINTS[sport] or _port_varint(sport), _PORT_VARINTS[dport] or _port_varint(dport)
    return b"".join((_L4_HEADS[kind][len(source) + len(destination)], source, b"\x10", destination,
                     _L4_TAILS[kind]))
_DROP_OR_VERDICT = (EVENT_DROP, EVENT_POLICY_VERDICT)
_POLICY_DROPS = {int(r) for r in (DropReason.POLICY_DENIED, DropReason.POLICY_DENY, DropReason.POLICY_NOT_INSTALLED)}


def _rule_id(etype: int, subtype: int, slot: int) -> int:
    """The policy rule a record names (its slot holds one for a verdict and a policy drop), or 0."""
    return slot if etype == EVENT_POLICY_VERDICT or (etype == EVENT_DROP and subtype in _POLICY_DROPS) else 0


def _drop_fields(code: int) -> tuple[bytes, bytes, str]:
    """(event_type sub-message, drop_reason + drop_reason_desc fields, the summary) of a drop code."""
    hubble = DROP_REASONS.get(code, flow_pb2.DROP_REASON_UNKNOWN)
    event_type = field_bytes(_EVENT_TYPE, field_varint(1, 1) + field_varint(2, DROP_REASONS.get(code, code)))
    reasons = field_varint(_DROP_REASON, hubble or code) + field_varint(_DROP_REASON_DESC, hubble)
    return event_type, reasons, CILIA_DROP_REASONS.get(code, ("", f"Unknown reason {code}"))[1]


_DROPS = [_drop_fields(n) for n in range(256)]
_TRACE_EVENT = [field_bytes(_EVENT_TYPE, field_varint(1, 4) + field_varint(2, _TRACE_POINT[n][0]))
                for n in range(256)]
_POLICY_EVENT = field_bytes(_EVENT_TYPE, field_varint(1, 5))
_IS_REPLY_TRUE = field_bytes(_IS_REPLY, field_varint(1, 1)) + field_varint(_REPLY, 1)
_IS_REPLY_FALSE = field_bytes(_IS_REPLY, b"")
_EMPTY_ETHERNET = field_bytes(_ETHERNET, b"")


_IDS = struct.Struct("<II")
_SLOT = struct.Struct("<I")
_ADDRESSES_AT = 1 + 20 + 20  # in a shape key: the L4 kind, record[8:28], record[34:54], then the addresses


def shape_key(record: bytes) -> bytes | None:
    """The key `WireEncoder.encode` caches a TCP or UDP record's fields by, with the L4 kind (TCP's
    flags, or UDP) first: what the record's flow is made of besides lookups, its time, lengths,
    ports and sequence numbers (cilia.flows.shape). None for a record not cached by shape (not
    TCP / UDP over IPv4 / IPv6, cut short, a trace through a service, not a trace / drop /
    policy verdict). The same tests as encode's, which stay inline there (its hot path)."""
    size = len(record)
    if size < 74:
        return None
    etype = record[8]
    if not ((etype == EVENT_TRACE and record[36:40] == b"\0\0\0\0") or etype in _DROP_OR_VERDICT):
        return None
    end = HEADER_SIZE + (record[32] | record[33] << 8)
    if end > size:
        end = size
    if end < 74:
        return None
    ethertype = record[52:54]
    if ethertype == b"\x08\x00":
        at, proto, addresses = 54 + (record[54] & 0x0F) * 4, record[63], record[66:74]
    elif ethertype == b"\x86\xdd" and end >= 94:
        at, proto, addresses = 94, record[60], record[62:94]
    else:
        return None
    if proto == 6 and end >= at + 14:
        kind = record[at + 13] & 0x3F
    elif proto == 17 and end >= at + 4:
        kind = _UDP
    else:
        return None
    return _KIND_BYTES[kind] + record[8:28] + record[34:54] + addresses


_KIND_BYTES = [bytes([kind]) for kind in range(_UDP + 1)]


def _ip_string(raw: bytes) -> str:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)  # the same text as ipaddress for IPv4
    return str(ipaddress.IPv6Address(raw))  # RFC 5952 as the slow path (inet_ntop may differ)


class _Cache:
    """A bounded dict: cleared when full (what it holds is cheap to make again)."""

    def __init__(self, make: Callable[[Any], Any], size: int = 4096) -> None:
        self._make = make
        self._size = size
        self._items: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        try:
            return self._items[key]
        except KeyError:
            if len(self._items) >= self._size:
                self._items.clear()
            value = self._items[key] = self._make(key)
            return value


def endpoint_message(ep_id: int, identity: int, namespace: str, labels: list[str] | tuple[str, ...],
                     pod_name: str) -> bytes:
    """An Endpoint sub-message's body, as convert._endpoint fills it."""
    parts = [field_varint(1, ep_id), field_varint(2, identity), field_string(3, namespace)]
    cluster = ""
    for label in labels:
        text = label[:-1] if label.endswith("=") else label
        parts.append(field_bytes(4, text.encode()))
        source, _, rest = text.partition(":")
        key, _, value = rest.partition("=")
        if key == CLUSTER_LABEL and source == "k8s":
            cluster = value
    parts.append(field_string(5, pod_name))
    parts.append(field_string(7, cluster))
    return b"".join(parts)


class WireEncoder:
    """Records -> GetFlowsResponse bytes, with the same lookups as the FlowBuilder it stands for.
    Safe to call from several threads (the Hubble loop and its history worker): every cache is a
    dict whose entries are complete when stored."""

    def __init__(self, node_name: str, identities: IdentityLookup, boot_time_ns: int,
                 rules: RuleLookup | None = None, services: ServiceLookup | None = None,
                 names: NameLookup | None = None) -> None:
        self._identities = identities
        self._names = names
        self._rules: RuleLookup = rules or (lambda _rule_id: None)
        self._services: ServiceLookup = services or (lambda _rev_nat_id: None)
        self._boot_time_ns = boot_time_ns
        self._node_name_field = field_string(_NODE_NAME, node_name)
        self._constant = (field_bytes(_EMITTER, field_string(1, EMITTER) + field_string(2, __version__))
                          + field_varint(_TYPE, _L3_L4) + self._node_name_field)
        self._response_node = field_string(_RESPONSE_NODE_NAME, node_name)
        self._ips = _Cache(self._ip_field)
        self._addresses = _Cache(lambda raw: (text := _ip_string(raw), text.encode()))
        self._views: dict[int, tuple[EndpointView, bytes]] = {}  # id(view) -> (view, body)
        self._by_identity = _Cache(lambda key: endpoint_message(0, key[0], "", key[1], ""))
        self._macs = _Cache(lambda raw: field_bytes(_ETHERNET, field_string(1, raw[6:12].hex(":"))
                                                    + field_string(2, raw[0:6].hex(":"))))
        self._traces = _Cache(self._trace_fields)
        self._interfaces = _Cache(lambda index: field_bytes(_INTERFACE, field_varint(1, index)))
        self._summaries = _Cache(lambda text: field_string(_SUMMARY, text))
        self._second: tuple[float, bytes, bytes, bytes] = (-1.0, b"", b"", b"")
        # TCP's and UDP's shapes: key -> (source, destination, their views, _extra's, the fields but
        # L4, summary, time and uuid, the summary field or None: by TCP flags)
        self._tcp_shapes: dict[bytes, _Shape] = {}
        self._udp_shapes: dict[bytes, _Shape] = {}

    # ----- endpoints -----------------------------------------------------------------------------
    def _endpoints(self, src_id: int, dst_id: int, looked: _Looked) -> bytes:
        """The source and destination fields, and the names of each side's IP in the other
        (local) side's DNS history (FlowBuilder._add_names)."""
        src_view, dst_view, extra = looked
        src_labels, dst_labels, destination_names, source_names, _rule = extra or _NOTHING_ELSE
        out = self._endpoint(_SOURCE_TAG, src_view, src_id, src_labels) + self._endpoint(
            _DESTINATION_TAG, dst_view, dst_id, dst_labels)
        if destination_names:
            out += b"".join(field_string(_DESTINATION_NAMES, n) for n in destination_names)
        if source_names:
            out += b"".join(field_string(_SOURCE_NAMES, n) for n in source_names)
        return out

    def _endpoint(self, field: bytes, view: EndpointView | None, identity: int, labels: tuple[str, ...] | None,
                  ) -> bytes:
        if view is not None:
            cached = self._views.get(id(view))
            if cached is None or cached[0] is not view:  # a view is replaced, never changed, when it changes
                if len(self._views) >= 4096:
                    self._views.clear()
                cached = (view, endpoint_message(view.id, view.identity, view.namespace, view.labels,
                                                 view.pod_name))
                self._views[id(view)] = cached
            body = cached[1]
        else:
            body = self._by_identity.get((identity, labels or ()))
        return field + _SMALL[len(body)] + body if len(body) < 16384 else field + varint(len(body)) + body

    def _trace_fields(self, key: tuple[int, int, int]) -> bytes:
        """What a trace's (sub type, conntrack status, direction) decide: event type, observation
        point, trace reason, is_reply, verdict, direction."""
        subtype, ct, direction_raw = key
        fields = (_TRACE_EVENT[subtype] + field_varint(_OBS_POINT, _TRACE_POINT[subtype][1])
                  + field_varint(_TRACE_REASON, _TRACE_REASONS[ct]) + field_varint(_VERDICT, _FORWARDED)
                  + field_varint(_DIRECTION, _DIRECTIONS.get(direction_raw, _UNKNOWN_DIRECTION)[1]))
        if ct != 0:  # trace_reason known: is_reply is set (build: ct_status "" -> unknown)
            fields += _IS_REPLY_TRUE if ct == 3 else _IS_REPLY_FALSE
        return fields

    def _ip_field(self, raw: bytes) -> tuple[bytes, str, str]:
        """The IP field of a packet's source and destination (4 or 16 bytes each, side by side),
        from each address's text (cached by address: a pod's is met with many peers)."""
        half = len(raw) // 2
        source, source_text = self._addresses.get(raw[:half])
        destination, destination_text = self._addresses.get(raw[half:])
        body = b"".join((b"\x0a", _SMALL[len(source_text)], source_text, b"\x12", _SMALL[len(destination_text)],
                         destination_text, _IP_VERSION_FIELDS[half == 4]))
        return field_bytes(_IP, body), source, destination

    # ----- the record ----------------------------------------------------------------------------
    def encode_many(self, records: list[bytes], flow_ids: list[str], endpoints: EndpointLookup,
                    ) -> list[bytes | None]:
        """`encode` of records read at once (a follower's batch): a shape met again in the batch
        is not checked against the lookups again (they are made once a batch, as they would be
        for one record; the check is most of what a record of a known shape costs)."""
        checked: dict[bytes, _Shape] = {}
        encode = self.encode
        return [encode(record, flow_id, endpoints, checked) for record, flow_id in zip(records, flow_ids, strict=True)]

    def encode(self, record: bytes, flow_id: str, endpoints: EndpointLookup,
               checked: dict[bytes, _Shape] | None = None) -> bytes | None:
        """GetFlowsResponse bytes for a trace / drop / policy-verdict record; None: the slow path's.

        A TCP or UDP packet over IPv4 or IPv6 (nearly every event) is encoded from its shape's
        cached fields: what the record says apart from its time, lengths, ports and TCP flags (the
        event, the endpoints' identities, MACs, addresses, interface, observation point, rule id),
        given the same lookups (endpoint views, identity labels, DNS names, the rule) as when they
        were made: only the ports and flags (L4, a trace's summary), the time and the uuid are
        encoded per flow. A trace to a service is not (its summary names the backend's port)."""
        size = len(record)
        if size < HEADER_SIZE:
            return None
        (ktime, etype, subtype, _file_id, _ct, _line, _endpoint_id, _ifindex, src_id, dst_id, _orig_len, cap_len,
         _direction, slot) = _HEADER.unpack_from(record)
        end = HEADER_SIZE + cap_len if HEADER_SIZE + cap_len < size else size
        kind = -1
        if end >= 74 and ((etype == EVENT_TRACE and not slot) or etype in _DROP_OR_VERDICT):
            # (a trace with a service's slot is not: its summary names the backend, by port)
            ethertype, at, proto, addresses = record[52:54], 0, 0, b""
            if ethertype == b"\x08\x00":
                at, proto, addresses = 54 + (record[54] & 0x0F) * 4, record[63], record[66:74]
            elif ethertype == b"\x86\xdd" and end >= 94:
                at, proto, addresses = 94, record[60], record[62:94]
            if proto == 6 and end >= at + 14:
                kind = record[at + 13] & 0x3F
            elif proto == 17 and end >= at + 4:
                kind = _UDP
        if kind < 0:
            if etype != EVENT_TRACE and etype != EVENT_DROP and etype != EVENT_POLICY_VERDICT:
                return None
            body, l4, summary = self._fields(record, endpoints)
            return self._response(body, l4, summary, ktime, flow_id)
        sport, dport = record[at] << 8 | record[at + 1], record[at + 2] << 8 | record[at + 3]
        key = record[8:28] + record[34:54] + addresses  # one bytes: cheaper to make and keep than a tuple
        shapes = self._udp_shapes if kind == _UDP else self._tcp_shapes
        rule_id = _rule_id(etype, subtype, slot)
        cached = shapes.get(key)
        if cached is not None:
            source, destination, src_view, dst_view, extra, body, shape_summary = cached
            # `checked`: the shapes this batch has checked (the key fixes every lookup's argument)
            if ((checked is not None and checked.get(key) is cached)
                    or (endpoints(source) is src_view and endpoints(destination) is dst_view
                        and (extra is None or extra == self._extra(source, destination, src_view, dst_view, src_id,
                                                                   dst_id, rule_id)))):
                if checked is not None:
                    checked[key] = cached
                summary = _FLAGS_SUMMARY[kind] if shape_summary is None else shape_summary
                return self._response(body, _l4(kind, sport, dport), summary, ktime, flow_id)
        _ip_field, source, destination = self._ips.get(addresses)
        looked = self._lookups(source, destination, src_id, dst_id, rule_id, endpoints)
        body, l4, summary = self._fields(record, endpoints, looked)  # made of these lookups, none of its own
        if len(shapes) >= _SHAPES:
            shapes.clear()
        # a trace's summary is its TCP flags (written per flow: the shape is the same for all flags)
        made = shapes[key] = (source, destination, *looked, body,
                              None if etype == EVENT_TRACE and kind < _UDP else summary)
        if checked is not None:
            checked[key] = made
        return self._response(body, l4, summary, ktime, flow_id)

    def shape(self, record: bytes, endpoints: EndpointLookup) -> Shape | None:
        """The record's shape (cilia.flows.shape): its `shape_key` and the lookups `encode` would
        make for it now; None for a record whose flow is not cached by shape."""
        key = shape_key(record)
        if key is None:
            return None
        src_id, dst_id = _IDS.unpack_from(record, 20)
        _ip_field, source, destination = self._ips.get(key[_ADDRESSES_AT:])
        src_view, dst_view, extra = self._lookups(source, destination, src_id, dst_id,
                                                  _rule_id(record[8], record[9], _SLOT.unpack_from(record, 36)[0]),
                                                  endpoints)
        return key, src_view, dst_view, extra

    def _lookups(self, source: str, destination: str, src_id: int, dst_id: int, rule_id: int,
                 endpoints: EndpointLookup) -> _Looked:
        """Everything the flow's fields are made of besides the record, looked up once."""
        src_view = endpoints(source) if source else None
        dst_view = endpoints(destination) if destination else None
        return src_view, dst_view, self._extra(source, destination, src_view, dst_view, src_id, dst_id, rule_id)

    def _extra(self, source: str, destination: str, src_view: EndpointView | None, dst_view: EndpointView | None,
               src_id: int, dst_id: int, rule_id: int) -> tuple[Any, ...] | None:
        """What a shape's fields are made of besides the endpoint views (None: nothing else, pod
        to pod without DNS names or a rule): the labels of an identity with no endpoint here, the
        names each side's DNS history has for the other, the rule (a copy: compared, not trusted)."""
        if src_view is not None and dst_view is not None and self._names is None and not rule_id:
            return None
        names = self._names
        rule = self._rules(rule_id) if rule_id else None
        return (None if src_view is not None else tuple(self._identities(src_id)),
                None if dst_view is not None else tuple(self._identities(dst_id)),
                tuple(names(src_view.id, destination)) if names and src_view is not None and src_view.id
                and destination else (),
                tuple(names(dst_view.id, source)) if names and dst_view is not None and dst_view.id and source else (),
                dict(rule) if rule is not None else None)

    def _response(self, body: bytes, l4: bytes, summary: bytes, ktime: int, flow_id: str) -> bytes:
        """The GetFlowsResponse: the flow (its fields, the L4 and summary fields, its time and
        uuid), the node name and the time again."""
        # The Timestamp as build writes the time (microseconds, through a float) and convert
        # reads it back: datetime.fromtimestamp's own arithmetic (split the float, round the
        # fraction to microseconds half-even), without making a datetime.
        fraction, whole = modf((self._boot_time_ns + ktime) / 1e9)
        micros = round(fraction * 1e6)
        second = self._second  # one attribute (the float, its stamps' starts): two threads see a whole
        if second[0] != whole or micros >= 1_000_000:
            seconds = int(whole)
            if micros >= 1_000_000:
                seconds, micros = seconds + 1, micros - 1_000_000
            made = field_varint(1, seconds)
            # the Timestamp with no nanos (its size, its seconds), the start of one whose nanos take
            # five bytes (the size, the seconds, nanos' tag), and the seconds with nanos' tag
            second = (whole, _SMALL[len(made)] + made, _SMALL[len(made) + 6] + made + b"\x10", made + b"\x10")
            if micros < 1_000_000:
                self._second = second
        # the stamp (size and all), written twice: the flow's time, the response's
        if micros >= _FIVE_BYTE_NANOS:  # most do: 1 << 28 ns .. 1 s
            nanos = micros * 1000
            stamp = second[2] + _LOW14[nanos & 0x3FFF] + _LOW14[nanos >> 14 & 0x3FFF] + _SMALL[nanos >> 28]
        elif micros:
            low, first = varint(micros * 1000), second[3]
            stamp = _SMALL[len(first) + len(low)] + first + low
        else:
            stamp = second[1]
        uuid = flow_id.encode()
        uuid_field = _UUID_TAG + (_SMALL[len(uuid)] if len(uuid) < 16384 else varint(len(uuid))) + uuid \
            if uuid else b""
        size = len(body) + len(l4) + len(summary) + 1 + len(stamp) + len(uuid_field)
        return b"".join((_RESPONSE_FLOW_TAG, _SMALL[size] if size < 16384 else varint(size), body, l4, summary,
                         _TIME_TAG, stamp, uuid_field, self._response_node, _RESPONSE_TIME_TAG, stamp))

    def _fields(self, record: bytes, endpoints: EndpointLookup, looked: _Looked | None = None,
                ) -> tuple[bytes, bytes, bytes]:
        """The flow's fields but its time and uuid, from the record and the lookups (`looked`, or
        made here): (all but the L4 and summary fields, the L4 field, the summary field)."""
        (_ktime, etype, subtype, file_id, ct, line, _endpoint_id, ifindex, src_id, dst_id, _orig_len, cap_len,
         direction_raw, slot) = _HEADER.unpack_from(record)
        service = self._services(slot) if etype == EVENT_TRACE and slot else None
        data = record[HEADER_SIZE: HEADER_SIZE + cap_len]
        parts: list[bytes] = []
        add = parts.append
        # the packet: Ethernet, IP, L4 (as monitor.events.parse_packet reads it)
        source = destination = ""
        summary = ""
        l4 = b""
        dport = 0
        if len(data) < 14:
            add(_EMPTY_ETHERNET)  # build always writes the ethernet dict, empty or not
        else:
            add(self._macs.get(data[0:12]))
            ethertype = data[12] << 8 | data[13]
            l4data = b""
            v6 = False
            proto = -1
            if ethertype == 0x0800 and len(data) >= 34:
                ip_field, source, destination = self._ips.get(data[26:34])
                add(ip_field)
                proto = data[23]
                l4data = data[14 + (data[14] & 0x0F) * 4:]
            elif ethertype == 0x86DD and len(data) >= 54:
                ip_field, source, destination = self._ips.get(data[22:54])
                add(ip_field)
                proto = data[20]
                l4data = data[54:]
                v6 = True
            if proto == 6 and len(l4data) >= 14:
                kind = l4data[13] & 0x3F
                summary = _TCP_FLAGS[kind][1]
                dport = l4data[2] << 8 | l4data[3]
                l4 = _l4(kind, l4data[0] << 8 | l4data[1], dport)
            elif proto == 17 and len(l4data) >= 4:
                _sport, dport = _PORTS.unpack_from(l4data)
                l4 = _l4(_UDP, _sport, dport)
                summary = "UDP"
            elif proto == 132 and len(l4data) >= 4:
                _sport, dport = _PORTS.unpack_from(l4data)  # no l4 field (build has none for SCTP), but ports
            elif (proto == 1 or proto == 58) and len(l4data) >= 2:
                icmp_type, code = l4data[0], l4data[1]
                body = field_varint(1, icmp_type) + field_varint(2, code)
                if v6:
                    l4 = field_bytes(_L4, field_bytes(4, body))
                    summary = f"ICMPv6 {_ICMP6_NAMES.get(icmp_type, str(icmp_type))}"
                else:
                    l4 = field_bytes(_L4, field_bytes(3, body))
                    summary = f"ICMPv4 {_ICMP4_NAMES.get(icmp_type, str(icmp_type))}"
        if looked is None:
            rule_id = _rule_id(etype, subtype, slot)
            looked = self._lookups(source, destination, src_id, dst_id, rule_id, endpoints)
        rule = looked[2][4] if looked[2] is not None else None
        # what kind of event: verdict, event type, drop reason, trace point, policy
        if etype == EVENT_TRACE:
            add(self._traces.get((subtype, ct, direction_raw)))
        else:
            direction, direction_value = _DIRECTIONS.get(direction_raw, _UNKNOWN_DIRECTION)
            add(field_varint(_DIRECTION, direction_value))
            if etype == EVENT_DROP:
                add(field_varint(_VERDICT, _DROPPED))
                event_type, reasons, summary = _DROPS[subtype]
                add(event_type)
                add(reasons)
                add(field_bytes(_FILE, field_string(1, SOURCE_FILES.get(file_id, f"file-{file_id}"))
                                + field_varint(2, line)))
                if ct == 3:
                    add(_IS_REPLY_TRUE)
                if subtype in _POLICY_DROPS:
                    decision = self._policy(parts, False, direction, rule, src_id, subtype, "")
                    summary += f" ({decision})"
            else:
                base = subtype & ~VERDICT_AUDIT_FLAG
                policy_verdict = VERDICTS.get(base, str(subtype))
                audited = bool(subtype & VERDICT_AUDIT_FLAG)
                allowed = base == PolicyVerdict.ALLOW
                verdict = _AUDIT if audited else _FORWARDED if allowed else _DROPPED
                add(field_varint(_VERDICT, verdict))
                add(_POLICY_EVENT)
                if verdict == _DROPPED:
                    reason = POLICY_VERDICT_DROP_REASONS.get(policy_verdict, flow_pb2.POLICY_DENIED)
                    add(field_varint(_DROP_REASON, reason) + field_varint(_DROP_REASON_DESC, reason))
                add(_IS_REPLY_TRUE if ct == 3 else _IS_REPLY_FALSE)
                decision = self._policy(parts, allowed, direction, rule, src_id, 0, policy_verdict)
                summary = f"policy {policy_verdict}{', audit: let through' if audited else ''} ({decision})"
        if service is not None:
            # service traffic (the per-packet path), as FlowBuilder._add_service: a request names
            # the backend chosen, a reply comes from the frontend
            reply = source == service["address"]
            add(field_bytes(_SOURCE_SERVICE if reply else _DESTINATION_SERVICE,
                            field_string(1, service["name"]) + field_string(2, service["namespace"])))
            backend = None if reply else host_port(destination, dport)
            via = f"service {service['service']} {service['frontend']}" + (f" -> {backend}" if backend else " (reply)")
            summary = f"{summary}; {via}" if summary else via
        if ifindex:
            add(self._interfaces.get(ifindex))
        add(self._endpoints(src_id, dst_id, looked))
        add(self._constant)
        return b"".join(parts), l4, self._summaries.get(summary)

    def _policy(self, parts: list[bytes], allowed: bool, direction: str, rule: dict[str, Any] | None,
                src_identity: int, drop_code: int, policy_verdict: str) -> str:
        """Appends the *_allowed_by / *_denied_by entry (when a rule decided); returns the decision text
        (FlowBuilder._policy's)."""
        if rule is not None:
            ref = "/".join(p for p in (rule["kind"], rule["namespace"], rule["name"]) if p)
            if rule.get("kind"):
                side = "ingress" if direction == "INGRESS" else "egress"
                parts.append(field_bytes(_POLICY_LISTS[(side, allowed)], policy_message(rule)))
            return f"{ref} {rule['rule']}"
        if drop_code == DropReason.POLICY_NOT_INSTALLED:
            return "policy not installed (fail closed)"
        if policy_verdict == "allowed":
            return "allow-localhost" if src_identity == ReservedIdentity.HOST else "no enforcement"
        return "default deny"


def policy_message(rule: dict[str, Any]) -> bytes:
    """A Policy sub-message's body, as convert._policy fills it."""
    name, namespace, kind = rule.get("name", ""), rule.get("namespace", ""), rule.get("kind", "")
    labels = []
    if kind:
        labels.append(f"k8s:io.cilium.k8s.policy.derived-from={kind}")
    if name:
        labels.append(f"k8s:io.cilium.k8s.policy.name={name}")
    if namespace:
        labels.append(f"k8s:io.cilium.k8s.policy.namespace={namespace}")
    return (field_string(1, name) + field_string(2, namespace) + b"".join(field_string(3, x) for x in labels)
            + field_varint(4, rule.get("revision", 0)) + field_string(5, kind))


# ----- field masks on the wire -------------------------------------------------------------------
_Tree = dict[str, "_Tree"]  # a FieldMask as protobuf's tree of names: an empty node is a whole field


def _mask_tree(paths: list[str]) -> _Tree:
    """protobuf's _FieldMaskTree.AddPath: a path covers every longer one under it."""
    root: _Tree = {}
    for path in paths:
        node = root
        for name in path.split("."):
            if name not in node:
                node[name] = {}
            elif not node[name]:
                break  # this whole field is in the mask already
            node = node[name]
        else:
            node.clear()
    return root


class _Node:
    """One message's fields in a mask: number -> (kind, sub-node); kind is "scalar", "message",
    "repeated" or "sub" (a singular message with paths below it)."""

    __slots__ = ("fields",)

    def __init__(self, tree: _Tree, descriptor: Any) -> None:
        self.fields: list[tuple[int, str, _Node | None]] = []
        for name, child in tree.items():
            field = descriptor.fields_by_name[name]
            if child:
                self.fields.append((field.number, "sub", _Node(child, field.message_type)))
            elif (field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED):
                self.fields.append((field.number, "repeated", None))
            elif field.message_type is not None:
                self.fields.append((field.number, "message", None))
            else:
                self.fields.append((field.number, "scalar", None))


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> dict[int, list[tuple[int, int, int]]]:
    """A message's fields: number -> [(start of the tag, start of the value, end)], in order.
    (One-byte tags and lengths, nearly all of a flow's, are read inline.)"""
    out: dict[int, list[tuple[int, int, int]]] = {}
    pos, end = 0, len(data)
    while pos < end:
        start = pos
        key = data[pos]
        pos += 1
        if key >= 0x80:
            second = data[pos]
            if second < 0x80:  # fields 16-2047
                key = (key & 0x7F) | second << 7
                pos += 1
            else:
                key, pos = _read_varint(data, start)
        wire_type = key & 7
        if wire_type == 2:
            size = data[pos]
            pos += 1
            if size >= 0x80:
                size, pos = _read_varint(data, pos - 1)
            value = pos
            pos += size
        elif wire_type == 0:
            while data[pos] >= 0x80:
                pos += 1
            pos += 1
            value = start
        elif wire_type == 1:
            value, pos = pos, pos + 8
        elif wire_type == 5:
            value, pos = pos, pos + 4
        else:
            raise ValueError(f"wire type {wire_type} in a flow")
        found = out.get(key >> 3)
        if found is None:
            out[key >> 3] = [(start, value, pos)]
        else:
            found.append((start, value, pos))
    if pos != end:
        raise ValueError("a field runs past the end of its message")
    return out


def _apply(node: _Node, data: bytes, fields: dict[int, list[tuple[int, int, int]]] | None = None,
           ) -> tuple[bytes, bool]:
    """The message masked, and whether FieldMask.MergeMessage would have touched (so made
    present) the destination: it assigns every scalar and merges every list in the mask, merges
    the messages the source has, and recurses into sub-messages the source has."""
    if fields is None:
        fields = _fields(data)
    parts: list[bytes] = []
    touched = False
    for number, kind, sub in node.fields:
        found = fields.get(number)
        if kind == "scalar" or kind == "repeated":  # assigned, or merged into (even empty): present
            touched = True
            if found:
                # a scalar's last value counts; a list keeps every element (packed or not)
                parts.extend(data[start:end] for start, _value, end in (found if kind == "repeated" else found[-1:]))
        elif kind == "sub":
            if found and sub is not None:
                # a message written more than once is their merge: its bodies one after the other
                inner, inner_touched = _apply(sub, b"".join(data[value:end] for _start, value, end in found))
                if inner_touched:
                    parts.append(field_bytes(number, inner))
                    touched = True
        elif found:
            parts.extend(data[start:end] for start, _value, end in found)
            touched = True
    return b"".join(parts), touched


class WireMask:
    """A GetFlows field mask applied to GetFlowsResponse bytes, as `FieldMask.MergeMessage` into
    an empty flow.Flow followed by the server's response (node name and time from the masked
    flow) would give, without parsing into messages (~50 µs a flow in Python's protobuf)."""

    def __init__(self, paths: list[str]) -> None:
        self._node = _Node(_mask_tree(paths), flow_pb2.Flow.DESCRIPTOR)
        top = {number: kind for number, kind, _sub in self._node.fields}
        self._node_name = top.get(_NODE_NAME) is not None
        self._time = top.get(_TIME)  # "message": the flow's time as it is; "sub": some of it

    def apply(self, response: bytes) -> bytes:
        if response[:1] == _RESPONSE_FLOW_TAG:  # ours: the flow first
            size, value = _read_varint(response, 1)
            end = value + size
        else:
            _start, value, end = _fields(response)[_RESPONSE_FLOW][-1]
        data = response[value:end]
        fields = _fields(data)
        flow, _touched = _apply(self._node, data, fields)
        out = [field_bytes(_RESPONSE_FLOW, flow)]
        if self._node_name and (node := fields.get(_NODE_NAME)):  # the response's: the masked flow's
            _start, value, end = node[-1]
            out.append(field_bytes(_RESPONSE_NODE_NAME, data[value:end]))
        stamp = b""
        if self._time == "message" and (found := fields.get(_TIME)):
            stamp = b"".join(data[value:end] for _start, value, end in found)
        elif self._time == "sub":
            stamp = _fields_value(flow, _TIME)
        out.append(field_bytes(_RESPONSE_TIME, stamp))
        return b"".join(out)


def _fields_value(data: bytes, number: int) -> bytes:
    """A sub-message field's body (its occurrences merged), b"" when absent."""
    found = _fields(data).get(number)
    return b"".join(data[value:end] for _start, value, end in found) if found else b""
