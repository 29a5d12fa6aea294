"""Labels and the identity allocator."""

from __future__ import annotations

from pathlib import Path

from cilia.identity.allocator import LocalIdentityAllocator
from cilia.identity.labels import Label, LabelSet
from cilia.identity.reserved import MIN_CLUSTER_IDENTITY, ReservedIdentity


def test_from_k8s_matches_cilium_labels() -> None:
    labels = LabelSet.from_k8s({"app": "web", "pod-template-hash": "abc"}, "team-a", {"team": "a"}, "sa1")
    assert [str(label) for label in labels] == [
        "k8s:app=web",
        "k8s:io.cilium.k8s.namespace.labels.team=a",
        "k8s:io.cilium.k8s.policy.cluster=default",
        "k8s:io.cilium.k8s.policy.serviceaccount=sa1",
        "k8s:io.kubernetes.pod.namespace=team-a",
    ]


def test_label_parse_round_trip() -> None:
    assert Label.parse("k8s:app=web") == Label("k8s", "app", "web")
    assert Label.parse("app=web") == Label("unspec", "app", "web")
    assert str(Label.parse("reserved:host")) == "reserved:host="


def test_same_labels_same_identity_refcounted(tmp_path: Path) -> None:
    alloc = LocalIdentityAllocator(tmp_path / "ids.json")
    web = LabelSet.from_k8s({"app": "web"}, "default")
    db = LabelSet.from_k8s({"app": "db"}, "default")
    a, b, c = alloc.allocate(web), alloc.allocate(web), alloc.allocate(db)
    assert a.id == b.id == MIN_CLUSTER_IDENTITY and c.id == MIN_CLUSTER_IDENTITY + 1
    assert b.references == 2
    assert alloc.release(web) and alloc.lookup_by_id(a.id) is not None  # one reference left
    assert alloc.release(web) and alloc.lookup_by_id(a.id) is None


def test_identities_survive_restart(tmp_path: Path) -> None:
    state = tmp_path / "ids.json"
    web = LabelSet.from_k8s({"app": "web"}, "default")
    first = LocalIdentityAllocator(state).allocate(web)
    assert LocalIdentityAllocator(state).allocate(web).id == first.id


def test_reserved_identities_listed() -> None:
    assert int(ReservedIdentity.HOST) == 1 and int(ReservedIdentity.WORLD) == 2


def test_reserved_present(tmp_path: Path) -> None:
    alloc = LocalIdentityAllocator(tmp_path / "ids.json")
    world = alloc.lookup_by_id(2)
    assert world is not None and world.reserved and [str(x) for x in world.labels] == ["reserved:world="]
