"""Rule ids survive an agent restart whatever order the store hands the policies back in."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.policy.kinds import parse_policy, policy_ref
from cilia.policy.repository import PolicyRepository
from cilia.policy.rules import Direction

POLICIES = [yaml.safe_load(text) for text in (
    """{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny-all, namespace: x},
        spec: {podSelector: {}, policyTypes: [Ingress]}}""",
    """{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: a-from-y, namespace: x},
        spec: {podSelector: {matchLabels: {pod: a}},
               ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]}}""",
    """{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: web, namespace: y},
        spec: {podSelector: {}, ingress: [{ports: [{port: 80}]}, {ports: [{port: 443}]}]}}""",
)]


def ids(repository: PolicyRepository) -> dict[str, list[int]]:
    return {str(ref): [e.rule_id for r in repository.rules_of(ref) for d in Direction for e in r.entries(d)]
            for ref in repository.refs()}


def load(path: Path, objects: list[dict[str, Any]]) -> PolicyRepository:
    repository = PolicyRepository(path)
    for obj in objects:
        repository.replace(policy_ref(obj), parse_policy(obj))
    repository.forget_absent()
    return repository


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(POLICIES)))))
def test_ids_are_the_same_after_a_restart_in_any_order(tmp_path: Path, order: tuple[int, ...]) -> None:
    first = load(tmp_path / "ids.json", POLICIES)
    restarted = load(tmp_path / "ids.json", [POLICIES[i] for i in order])
    assert ids(restarted) == ids(first)
    assert all(restarted.info(i) is not None for values in ids(restarted).values() for i in values)


def test_ids_of_a_policy_deleted_while_down_are_forgotten(tmp_path: Path) -> None:
    first = load(tmp_path / "ids.json", POLICIES)
    gone = ids(first)["NetworkPolicy/y/web"]
    restarted = load(tmp_path / "ids.json", POLICIES[:2])
    restarted.replace(policy_ref(POLICIES[2]), parse_policy(POLICIES[2]))
    assert set(ids(restarted)["NetworkPolicy/y/web"]).isdisjoint(gone)  # numbered afresh


def test_changing_one_policy_keeps_the_ids_of_the_others(tmp_path: Path) -> None:
    repository = load(tmp_path / "ids.json", POLICIES)
    before = ids(repository)
    changed = yaml.safe_load(yaml.safe_dump(POLICIES[2]))
    changed["spec"]["ingress"] = [{"ports": [{"port": 80}]}]
    repository.replace(policy_ref(changed), parse_policy(changed))
    after = ids(repository)
    assert after["NetworkPolicy/x/a-from-y"] == before["NetworkPolicy/x/a-from-y"]
    assert after["NetworkPolicy/y/web"] == before["NetworkPolicy/y/web"][:1]
