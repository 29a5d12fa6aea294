"""The embedded object store: parsing, validation errors, batch atomicity, watch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cilia.resources import ResourceError, parse_documents
from cilia.resources.store import LocalStore


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
    store = LocalStore(tmp_path / "r.json")
    with pytest.raises(ResourceError, match=message):
        store.apply([obj])


def test_bad_batch_stores_nothing_and_missing_namespace(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "r.json")
    with pytest.raises(ResourceError, match="namespace 'team-a' does not exist"):
        store.apply([pod("web", "team-a")])
    with pytest.raises(ResourceError):
        store.apply([ns("ok"), pod("Bad")])
    assert store.get("Namespace", None, "ok") is None
    outcomes = store.apply([ns("team-a"), pod("web", "team-a")])
    assert [o.action for o in outcomes] == ["created", "created"]


def test_apply_unchanged_configured_delete_and_watch(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "r.json")
    events: list[str] = []
    store.watch(lambda event, obj, old: events.append(f"{event} {obj['metadata']['name']}"))
    assert store.apply([pod("web", app="a")])[0].action == "created"
    assert store.apply([pod("web", app="a")])[0].action == "unchanged"
    assert store.apply([pod("web", app="b")])[0].action == "configured"
    assert store.delete([pod("web")])[0].action == "deleted"
    assert store.delete([pod("web")])[0].action == "not-found"
    assert events == ["ADDED web", "MODIFIED web", "DELETED web"]
    again = LocalStore(tmp_path / "r.json")
    assert again.list("Pod") == []
