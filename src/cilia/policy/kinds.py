"""The policy kinds the object store accepts, each validated by parsing it completely."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cilia.policy import cilium, k8s
from cilia.policy.rules import PolicyRef, Rule
from cilia.resources.kinds import Kind
from cilia.resources.validate import validate_common

PARSERS: dict[tuple[str, str], tuple[bool, Callable[[dict[str, Any]], list[Rule]]]] = {
    (k8s.API_VERSION, k8s.KIND): (True, k8s.parse_network_policy),
    (cilium.API_VERSION, cilium.CNP): (True, cilium.parse_cilium_policy),
    (cilium.API_VERSION, cilium.CCNP): (False, cilium.parse_cilium_policy),
}
POLICY_KINDS = frozenset(kind for _api, kind in PARSERS)


def is_policy(obj: dict[str, Any]) -> bool:
    return obj.get("kind") in POLICY_KINDS


def policy_ref(obj: dict[str, Any]) -> PolicyRef:
    namespaced = PARSERS[(obj["apiVersion"], obj["kind"])][0]
    metadata = obj["metadata"]
    return PolicyRef(obj["kind"], metadata.get("namespace", "default") if namespaced else "", metadata["name"])


def parse_policy(obj: dict[str, Any]) -> list[Rule]:
    return PARSERS[(obj["apiVersion"], obj["kind"])][1](obj)


def _validator(namespaced: bool, parse: Callable[[dict[str, Any]], list[Rule]]) -> Callable[[dict[str, Any]], None]:
    def validate(obj: dict[str, Any]) -> None:
        specs = obj.pop("specs", None)  # validate_common knows only Kubernetes' top-level fields
        try:
            validate_common(obj, namespaced)
        finally:
            if specs is not None:
                obj["specs"] = specs
        parse(obj)

    return validate


# Registered by the composition root (cilia.resources.kinds.KindRegistry).
KINDS: tuple[Kind, ...] = tuple(
    Kind(api_version, kind, namespaced, _validator(namespaced, parse))
    for (api_version, kind), (namespaced, parse) in PARSERS.items()
)
