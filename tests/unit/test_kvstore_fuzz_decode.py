"""Property fuzz of every decoder of values read from etcd (identities, objects): whatever bytes a key holds (written by
hand, by another version, truncated), decoding either returns a record or raises the module's
BadRecord naming the key. Anything else would escape the reflector's handler as a crash."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from cilia.identity.labels import LabelSet
from cilia.kvstore.identities import (
    ID_PREFIX,
    LABELS_PREFIX,
    REFS_PREFIX,
    BadRecord,
    decode_identity,
    decode_labels_entry,
    decode_ref_key,
    encode_identity,
)
from cilia.kvstore.resources import PREFIX as RESOURCE_PREFIX
from cilia.kvstore.resources import BadObject, decode_object, object_key
from cilia.lb import kinds as lb_kinds
from cilia.policy import kinds as policy_kinds
from cilia.resources.kinds import CORE_KINDS, KindRegistry

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
documents = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"labels": json_values}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"labels": st.lists(st.text(max_size=20), max_size=4)}).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"id": json_values}).map(lambda v: json.dumps(v).encode()),
)
suffixes = st.one_of(st.text(max_size=12), st.integers(-5, 70000).map(str))


@given(suffixes, documents)
@example("256", b'{"labels": ["k8s:app=web"]}')
@example("256", b'{"labels": ["=x"]}')
@example("256", b"[" * 5000)
@example("0256", b'{"labels": ["k8s:app=web"]}')
def test_identity_values(suffix: str, value: bytes) -> None:
    key = ID_PREFIX + suffix
    try:
        number, labels = decode_identity(key, value)
    except BadRecord as exc:
        assert key in str(exc)
        return
    assert str(number) == suffix and len(labels) > 0
    assert decode_identity(key, encode_identity(labels)) == (number, labels)


@given(st.text(max_size=30), documents)
@example("k8s:app=web", b'{"id": true}')
@example("k8s:app=web", b'{"id": 1e400}')
def test_labels_entries(suffix: str, value: bytes) -> None:
    key = LABELS_PREFIX + suffix
    try:
        number = decode_labels_entry(key, value)
    except BadRecord as exc:
        assert key in str(exc)
        return
    assert 256 <= number <= 65535


@given(st.text(max_size=30))
@example("256/node-a")
@example("٣٠٠/node-a")  # non-ASCII digits are no number here
def test_reference_keys(suffix: str) -> None:
    key = REFS_PREFIX + suffix
    try:
        number, node = decode_ref_key(key)
    except BadRecord as exc:
        assert key in str(exc)
        return
    assert f"{number}/{node}" == suffix


def test_round_trip_of_a_real_label_set() -> None:
    labels = LabelSet.from_k8s({"app": "web", "app.kubernetes.io/name": "x"}, "prod")
    assert decode_identity(f"{ID_PREFIX}300", encode_identity(labels)) == (300, labels)


RESOURCE_KINDS = KindRegistry(CORE_KINDS + lb_kinds.KINDS + policy_kinds.KINDS)
pod_like = st.fixed_dictionaries({
    "apiVersion": st.sampled_from(["v1", "cilium.io/v2", "x"]),
    "kind": st.sampled_from(["Pod", "Namespace", "Service", "CiliumNetworkPolicy", "Secret"]),
    "metadata": st.one_of(json_values, st.fixed_dictionaries({"name": st.text(max_size=8),
                                                              "namespace": st.text(max_size=8)})),
}, optional={"spec": json_values})


@given(st.text(max_size=40), st.one_of(documents, pod_like.map(lambda v: json.dumps(v).encode())))
@example("Pod/default/web", b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"default"}}')
@example("Pod/default/web", b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"}}')
@example("Namespace/_/a", b'{"apiVersion":"v1","kind":"Namespace","metadata":null}')
def test_resource_values(suffix: str, value: bytes) -> None:
    key = RESOURCE_PREFIX + suffix
    try:
        obj = decode_object(key, value, RESOURCE_KINDS, 7)
    except BadObject as exc:
        assert key in str(exc)
        return
    assert object_key(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]) == key
    assert obj["metadata"]["resourceVersion"] == "7"
