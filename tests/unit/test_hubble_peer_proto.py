"""Golden test: cilia's peer/peer.proto declares exactly upstream Hubble's Peer service on the wire.

The table is upstream's api/v1/peer/peer.proto (Cilium v1.19, unchanged since Hubble 0.x), field by
field: message -> field -> (number, type, repeated); enum values; the one server-streaming method.
Checked through the generated descriptors, as in test_hubble_proto.py. A mismatch here means an
upstream relay or `hubble watch peers` would misread a cilia agent."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, descriptor_pool

from cilia.hubble.pb import peer_pb2

UPSTREAM_MESSAGES = {
    "peer.NotifyRequest": {},
    "peer.ChangeNotification": {
        "name": (1, "string", False),
        "address": (2, "string", False),
        "type": (3, "peer.ChangeNotificationType", False),
        "tls": (4, "peer.TLS", False),
    },
    "peer.TLS": {"server_name": (1, "string", False)},
}
UPSTREAM_ENUMS = {"peer.ChangeNotificationType": {"UNKNOWN": 0, "PEER_ADDED": 1, "PEER_DELETED": 2, "PEER_UPDATED": 3}}
UPSTREAM_SERVICES = {"peer.Peer": {"Notify": ("peer.NotifyRequest", "peer.ChangeNotification", True)}}

_POOL = descriptor_pool.Default()
_SCALARS = {v: k for k, v in vars(descriptor.FieldDescriptor).items() if k.startswith("TYPE_")}


def _type_name(field: Any) -> str:
    if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
        return str(field.message_type.full_name)
    if field.type == descriptor.FieldDescriptor.TYPE_ENUM:
        return str(field.enum_type.full_name)
    return _SCALARS[field.type].removeprefix("TYPE_").lower()


def test_messages_match_upstream() -> None:
    declared = {m.full_name for m in peer_pb2.DESCRIPTOR.message_types_by_name.values()}
    assert declared == set(UPSTREAM_MESSAGES)
    for name, fields in UPSTREAM_MESSAGES.items():
        ours = _POOL.FindMessageTypeByName(name)
        assert {f.name: (f.number, _type_name(f), bool(f.is_repeated)) for f in ours.fields} == fields, name


def test_enums_match_upstream() -> None:
    declared = {e.full_name for e in peer_pb2.DESCRIPTOR.enum_types_by_name.values()}
    assert declared == set(UPSTREAM_ENUMS)
    for name, values in UPSTREAM_ENUMS.items():
        assert {v.name: v.number for v in _POOL.FindEnumTypeByName(name).values} == values


def test_service_matches_upstream() -> None:
    assert {s.full_name for s in peer_pb2.DESCRIPTOR.services_by_name.values()} == set(UPSTREAM_SERVICES)
    for name, methods in UPSTREAM_SERVICES.items():
        ours = _POOL.FindServiceByName(name)
        have = {m.name: (m.input_type.full_name, m.output_type.full_name, m.server_streaming) for m in ours.methods}
        assert have == methods
        assert all(not m.client_streaming for m in ours.methods)
    # the gRPC path an upstream relay calls
    assert peer_pb2.DESCRIPTOR.package == "peer"


def test_wire_bytes_of_a_notification() -> None:
    """Hand-encoded: field 1 "n1", field 2 "a:1", field 3 varint 1, field 4 {field 1 "s"}."""
    message = peer_pb2.ChangeNotification(name="n1", address="a:1", type=peer_pb2.PEER_ADDED,
                                          tls=peer_pb2.TLS(server_name="s"))
    assert message.SerializeToString() == b"\x0a\x02n1\x12\x03a:1\x18\x01\x22\x03\x0a\x01s"
