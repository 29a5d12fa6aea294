"""Mutation fuzz of every kind the object store takes, through the entry the API's apply uses
(LocalStore.apply): a mutated object is either stored or refused with a ResourceError that names
the object and the field, never a crash (the API would answer 500 naming nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from mutation import FUZZ, check_error, crashes_of_single_edits, mutated

from cilia.lb import kinds as lb_kinds
from cilia.policy import kinds as policy_kinds
from cilia.resources.kinds import CORE_KINDS, KindRegistry
from cilia.resources.parse import ResourceError
from cilia.resources.store import LocalStore

ROOT = Path(__file__).resolve().parents[2]
KINDS = ["Namespace", "Pod", "Service", "EndpointSlice", "NetworkPolicy", "CiliumNetworkPolicy",
         "CiliumClusterwideNetworkPolicy"]


def _seeds() -> dict[str, list[dict[str, Any]]]:
    documents = list(yaml.safe_load_all((ROOT / "tests/unit/fuzz_seeds/resources.yaml").read_text()))
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(example.read_text()) if isinstance(d, dict) and "kind" in d]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    return by_kind


SEEDS = _seeds()
_store: LocalStore | None = None


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStore]:
    global _store
    kinds = KindRegistry([*CORE_KINDS, *lb_kinds.KINDS, *policy_kinds.KINDS])  # as the agent composes it
    _store = LocalStore(tmp_path_factory.mktemp("fuzz-store") / "state.db", kinds)
    _store.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in ("team-a", "y")])
    yield _store
    _store = None


def apply_one(obj: Any) -> None:
    assert _store is not None
    try:
        _store.apply([obj])
    except ResourceError as exc:
        check_error(str(exc), obj)


def test_seeds_are_valid_and_cover_every_kind(store: LocalStore) -> None:
    assert sorted(SEEDS) == sorted(KINDS)
    for seeds in SEEDS.values():
        store.apply(seeds)


@pytest.mark.parametrize("kind", KINDS)
def test_mutated_objects_parse_or_fail_naming_object_and_field(store: LocalStore, kind: str) -> None:
    @FUZZ
    @given(mutated(SEEDS[kind]))
    def run(obj: Any) -> None:
        apply_one(obj)

    run()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        # crashes the fuzz found (TypeError / AttributeError before the fix, and the API's 500)
        ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"ports": 5}]}},
         "Pod default/p: field 'spec.containers[0].ports': must be a list"),
        ({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c"},
          "spec": {"endpointSelector": {}, "ingress": [{"fromEntities": [["world"]]}]}},
         "CiliumNetworkPolicy default/c: field 'spec.ingress[0].fromEntities[0]': unknown entity"),
        ({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "c"},
          "spec": {"endpointSelector": {}, "egress": [{"toEntities": [{"world": 1}]}]}},
         "CiliumNetworkPolicy default/c: field 'spec.egress[0].toEntities[0]': unknown entity"),
    ],
)
def test_found_crashes_are_errors_naming_object_and_field(store: LocalStore, obj: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(ResourceError) as info:
        store.apply([obj])
    assert message in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
def test_every_single_edit_parses_or_fails_naming_object_and_field(store: LocalStore, kind: str) -> None:
    """Exhaustive at one edit: every field of every seed replaced by a value of each JSON type, or
    deleted (the random fuzz above combines edits)."""
    assert crashes_of_single_edits(SEEDS[kind], apply_one) == []


@pytest.mark.parametrize("name", ["web\n", "web\n\n"])
def test_a_name_with_a_trailing_newline_is_refused(store: LocalStore, name: str) -> None:
    """`$` in a Python regex also matches before a trailing newline: the name patterns use \\Z."""
    with pytest.raises(ResourceError, match=r"metadata\.name"):
        store.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}}])
    with pytest.raises(ResourceError, match=r"metadata\.labels"):
        store.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": name}}}])
