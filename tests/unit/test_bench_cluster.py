"""bench.scale's synthetic cluster (its keys and values in cilia's format, checked against the
decoders the agents use) and bench.convergence's reading of the prober's attempts."""

from __future__ import annotations

import importlib
import ipaddress
from collections import Counter

import pytest
from bench import convergence, scale

from cilia.identity.labels import LabelSet


def records(nodes: int = 3, pods: int = 5, identities: int = 4) -> list[scale.Record]:
    return list(scale.synthetic_cluster(nodes, pods, identities))


def test_synthetic_cluster_has_every_key_once_under_its_nodes_lease() -> None:
    written = records()
    kinds = Counter(r.key.split("/")[1] + ("/" + r.key.split("/")[2] if "identities" in r.key else "") for r in written)
    assert kinds["ipcache"] == 15 and kinds["nodes"] == 3
    assert kinds["identities/id"] == 4 and kinds["identities/labels"] == 4
    assert len({r.key for r in written}) == len(written)
    for record in written:
        leased = record.key.startswith(("cilia/ipcache/", "cilia/nodes/", "cilia/identities/refs/"))
        assert (record.node is not None) == leased, record.key
    # node s002's refs: the identities its pods use, each once
    refs = sorted(r.key for r in written if r.key.startswith("cilia/identities/refs/") and r.node == "s002")
    used = {scale.identity_of(2, j, 5, 4) for j in range(5)}
    assert refs == sorted(f"cilia/identities/refs/{n}/s002" for n in used)


def test_synthetic_addresses_and_expected_map() -> None:
    assert str(scale.pod_ip(1, 0)) == "10.210.1.1"
    assert str(scale.pod_ip(300, 99)) == "10.211.44.100"
    assert str(scale.node_ipv4(100)) == "10.90.0.100"
    with pytest.raises(ValueError):
        scale.pod_ip(1, 254)
    expected = scale.expected_endpoints(2, 3, 4)
    assert len(expected) == 6
    assert expected[ipaddress.IPv4Network("10.210.2.3/32")] == scale.IDENTITY_BASE + (2 * 3 + 2) % 4
    assert scale.missing(dict(expected), expected) == 0
    partial = dict(expected)
    partial[ipaddress.IPv4Network("10.210.1.1/32")] = 2  # world: not the pod's identity
    assert scale.missing(partial, expected) == 1


def test_identity_labels_key_is_the_allocators() -> None:
    labels = scale.identity_labels(3)
    assert LabelSet.parse_many(labels).key() == ";".join(labels)
    keys = {r.key for r in records() if r.key.startswith("cilia/identities/labels/")}
    assert f"cilia/identities/labels/{LabelSet.parse_many(labels).key()}" in keys


def test_batches_stay_under_etcds_transaction_limit() -> None:
    sizes = [len(b) for b in scale.batches(iter(records(10, 30, 50)))]
    assert max(sizes) == scale.TXN_OPS <= 128
    assert sum(sizes) == len(records(10, 30, 50))


def test_synthetic_values_decode_with_the_agents_codecs() -> None:
    codec = pytest.importorskip("cilia.cluster.codec")
    try:
        identities = importlib.import_module("cilia.kvstore.identities")
    except ImportError:  # the allocator's decoders not merged yet: the cluster records are still checked
        identities = None
    for record in records():
        if record.key.startswith("cilia/ipcache/"):
            decoded = codec.decode_ipcache(record.key, record.value)
            assert decoded.node == record.node and decoded.identity >= scale.IDENTITY_BASE
        elif record.key.startswith("cilia/nodes/"):
            assert codec.decode_node(record.key, record.value).pod_cidrs[0].prefixlen == 24
        elif identities is not None and record.key.startswith("cilia/identities/id/"):
            number, labels = identities.decode_identity(record.key, record.value)
            assert number >= scale.IDENTITY_BASE and len(labels) == 2
        elif identities is not None and record.key.startswith("cilia/identities/labels/"):
            assert identities.decode_labels_entry(record.key, record.value) >= scale.IDENTITY_BASE
        elif identities is not None and record.key.startswith("cilia/identities/refs/"):
            assert identities.decode_ref_key(record.key)[1] == record.node


def test_enforcement_is_the_first_of_two_attempts_with_the_new_verdict() -> None:
    attempts = [(0.0, 1), (1.0, 1), (1.1, 0), (1.2, 1), (1.3, 0), (1.4, 0), (1.5, 0)]
    assert convergence.enforced_at(attempts, 1.0, 0) == 1.3  # the lone timeout at 1.1 is noise
    assert convergence.enforced_at(attempts, 0.0, 1) == 0.0
    assert convergence.enforced_at(attempts, 1.3, 1) is None
    assert convergence.enforced_at(attempts, 1.0, 0, confirm=1) == 1.1


def test_convergence_verdicts() -> None:
    out = {"pod_add_to_remote_ipcache": {"from_add_return_s": {"p99": 0.4}, "from_add_start_s": {"p99": 1.2}},
           "policy_apply_to_remote_enforcement": {"all_s": {"n": 0}}}
    assert list(convergence.verdicts(out).values()) == ["met", "missed", "-"]
    assert set(scale.verdicts({"live_sync_seconds_from_last_write": 1.0, "live_bytes_per_endpoint": 4000}).values()) \
        == {"met", "missed", "-"}
