"""Golden test: cilia's Hubble .proto files declare exactly upstream Hubble's wire interface.

Checked through the generated descriptors (what actually goes on the wire): every message's
fields with their numbers, types and cardinality, every enum value, and the gRPC service's
method names, message types and streaming. A mismatch here means `hubble` would misread us."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor, descriptor_pool
from hubble_upstream_table import ENUMS, MESSAGES, SERVICES

from cilia.hubble.pb import flow_pb2, observer_pb2, relay_pb2

_POOL = descriptor_pool.Default()
_SCALARS = {v: k for k, v in vars(descriptor.FieldDescriptor).items() if k.startswith("TYPE_")}


def _type_name(field: Any) -> str:
    if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
        return str(field.message_type.full_name)
    if field.type == descriptor.FieldDescriptor.TYPE_ENUM:
        return str(field.enum_type.full_name)
    return _SCALARS[field.type].removeprefix("TYPE_").lower()


def _is_repeated(field: Any) -> bool:
    return bool(field.is_repeated)


@pytest.mark.parametrize("message", sorted(MESSAGES))
def test_message_fields_match_upstream(message: str) -> None:
    ours = _POOL.FindMessageTypeByName(message)
    have = {f.name: (f.number, _type_name(f), _is_repeated(f)) for f in ours.fields}
    assert have == MESSAGES[message]


@pytest.mark.parametrize("enum", sorted(ENUMS))
def test_enum_values_match_upstream(enum: str) -> None:
    ours = _POOL.FindEnumTypeByName(enum)
    assert {v.name: v.number for v in ours.values} == ENUMS[enum]


def test_we_declare_no_message_or_enum_upstream_lacks() -> None:
    ours_messages: set[str] = set()
    ours_enums: set[str] = set()

    def walk(container: Any) -> None:
        for m in container.message_types_by_name.values() if hasattr(container, "message_types_by_name") \
                else container.nested_types:
            ours_messages.add(m.full_name)
            ours_enums.update(e.full_name for e in m.enum_types)
            walk(m)

    for module in (flow_pb2, observer_pb2, relay_pb2):
        walk(module.DESCRIPTOR)
        ours_enums.update(e.full_name for e in module.DESCRIPTOR.enum_types_by_name.values())
    assert ours_messages == set(MESSAGES)
    assert ours_enums == set(ENUMS)


def test_service_methods_match_upstream() -> None:
    for service, methods in SERVICES.items():
        ours = _POOL.FindServiceByName(service)
        have = {m.name: (m.input_type.full_name, m.output_type.full_name, m.server_streaming) for m in ours.methods}
        assert have == methods
        assert all(not m.client_streaming for m in ours.methods)


@pytest.mark.parametrize(("field", "number"), [
    ("time", 1), ("verdict", 2), ("drop_reason", 3), ("IP", 5), ("l4", 6), ("source", 8), ("destination", 9),
    ("Type", 10), ("node_name", 11), ("event_type", 19), ("traffic_direction", 22), ("trace_observation_point", 24),
    ("drop_reason_desc", 25), ("is_reply", 26), ("uuid", 34), ("Summary", 100000), ("egress_allowed_by", 21001),
    ("ingress_denied_by", 21005),
])
def test_flow_field_numbers_spot_check(field: str, number: int) -> None:
    """The ones `hubble observe` output depends on most, spelled out."""
    assert flow_pb2.Flow.DESCRIPTOR.fields_by_name[field].number == number


def test_key_enum_values_spot_check() -> None:
    assert (flow_pb2.FORWARDED, flow_pb2.DROPPED, flow_pb2.AUDIT, flow_pb2.TRANSLATED) == (1, 2, 4, 7)
    assert (flow_pb2.POLICY_DENIED, flow_pb2.POLICY_DENY) == (133, 181)
    assert (flow_pb2.TO_ENDPOINT, flow_pb2.FROM_ENDPOINT, flow_pb2.TO_STACK) == (101, 5, 3)
    assert (flow_pb2.INGRESS, flow_pb2.EGRESS, flow_pb2.L3_L4) == (1, 2, 1)
    assert relay_pb2.NODE_CONNECTED == 1
    assert observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name == "observer.Observer"
