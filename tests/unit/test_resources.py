"""The embedded object store: parsing, validation errors, batch atomicity, watch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cilia.resources import ResourceError, parse_documents
from cilia.resources.kinds import CORE_KINDS, Kind, KindRegistry
from cilia.resources.store import LocalStore

KINDS = KindRegistry(CORE_KINDS)


def ns(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, namespace: str = "default", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels}}


def test_multi_document_and_list() -> None:
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\nkind: List\nitems:\n- {kind: Pod}\n"
    assert [o["kind"] for o in parse_documents(text, "f.yaml")] == ["Namespace", "Pod"]


def test_malformed_yaml_names_file_and_line() -> None:
    with pytest.raises(ResourceError, match=r"f.yaml: line 2"):
        parse_documents("a: b\n  c: [\n", "f.yaml")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({**pod("web"), "spek": {}}, "field 'spek': unknown field"),
        (pod("Web"), "metadata.name"),
        (pod("web", app="bad value!"), "metadata.labels.app"),
        ({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}}, "not supported yet"),
        ({**pod("web"), "spec": {"containers": [{"ports": [{"containerPort": 70000}]}]}},
         r"spec.containers\[0\].ports\[0\].containerPort"),
    ],
)
def test_validation_errors_name_the_field(tmp_path: Path, obj: dict[str, Any], message: str) -> None:
    store = LocalStore(tmp_path / "r.json", KINDS)
    with pytest.raises(ResourceError, match=message):
        store.apply([obj])


def test_bad_batch_stores_nothing_and_missing_namespace(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "r.json", KINDS)
    with pytest.raises(ResourceError, match="namespace 'team-a' does not exist"):
        store.apply([pod("web", "team-a")])
    with pytest.raises(ResourceError):
        store.apply([ns("ok"), pod("Bad")])
    assert store.get("Namespace", None, "ok") is None
    outcomes = store.apply([ns("team-a"), pod("web", "team-a")])
    assert [o.action for o in outcomes] == ["created", "created"]


def test_apply_unchanged_configured_delete_and_watch(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "r.json", KINDS)
    events: list[str] = []
    store.watch(lambda event, obj, old: events.append(f"{event} {obj['metadata']['name']}"))
    assert store.apply([pod("web", app="a")])[0].action == "created"
    assert store.apply([pod("web", app="a")])[0].action == "unchanged"
    assert store.apply([pod("web", app="b")])[0].action == "configured"
    assert store.delete([pod("web")])[0].action == "deleted"
    assert store.delete([pod("web")])[0].action == "not-found"
    assert events == ["ADDED web", "MODIFIED web", "DELETED web"]
    again = LocalStore(tmp_path / "r.json", KINDS)
    assert again.list("Pod") == []


def test_a_store_accepts_only_the_kinds_it_was_given(tmp_path: Path) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}
    with pytest.raises(ResourceError, match=r"kind 'Service' is not supported yet \(supported: v1/Namespace, v1/Pod\)"):
        LocalStore(tmp_path / "a.db", KINDS).apply([service])
    seen: list[str] = []

    def validate_service(obj: dict[str, Any]) -> None:
        seen.append(obj["kind"])
        obj["metadata"].setdefault("namespace", "default")

    kinds = KindRegistry([*CORE_KINDS, Kind("v1", "Service", True, validate_service)])
    assert [o.action for o in LocalStore(tmp_path / "b.db", kinds).apply([service])] == ["created"]
    assert seen == ["Service"]
    assert ("v1", "Service") not in KINDS  # building one registry changed no other


def test_a_kind_is_registered_once() -> None:
    with pytest.raises(ValueError, match="v1/Pod is registered twice"):
        KindRegistry([*CORE_KINDS, CORE_KINDS[1]])


def test_cluster_scope_by_kind_alone() -> None:
    assert KINDS.is_cluster_scoped({"kind": "Namespace"})
    assert not KINDS.is_cluster_scoped({"kind": "Pod"})
