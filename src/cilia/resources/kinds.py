"""The kinds an object store accepts: an explicit registry, built by whoever composes the store.

Each package that owns a kind exports its `Kind` entries (`CORE_KINDS` here, `cilia.lb.kinds.KINDS`,
`cilia.policy.kinds.KINDS`); the agent's composition root puts them into one `KindRegistry` and hands
it to the store. Importing a module registers nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cilia.resources.parse import ResourceError
from cilia.resources.validate import describe, validate_namespace, validate_pod

Validator = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    namespaced: bool
    validate: Validator


CORE_KINDS: tuple[Kind, ...] = (
    Kind("v1", "Namespace", False, validate_namespace),
    Kind("v1", "Pod", True, validate_pod),
)


class KindRegistry:
    """apiVersion + kind -> scope and validator. A kind is registered once."""

    def __init__(self, kinds: Iterable[Kind] = ()) -> None:
        self._kinds: dict[tuple[str, str], Kind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: Kind) -> None:
        key = (kind.api_version, kind.kind)
        if key in self._kinds:
            raise ValueError(f"kind {kind.api_version}/{kind.kind} is registered twice")
        self._kinds[key] = kind

    def __contains__(self, key: object) -> bool:
        return key in self._kinds

    def get(self, api_version: str, kind: str) -> Kind | None:
        return self._kinds.get((api_version, kind))

    def supported(self) -> list[str]:
        return [f"{api_version}/{kind}" for api_version, kind in self._kinds]

    def validate(self, obj: Any) -> None:
        """Raises ResourceError naming the object and field; may fill defaults (metadata.namespace)."""
        if not isinstance(obj, dict):
            raise ResourceError(f"an object must be a mapping, got {type(obj).__name__}")
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(kind, str) or not kind:
            raise ResourceError(f"{describe(obj)}: field 'kind': is required")
        entry = self._kinds.get((api_version, kind)) if isinstance(api_version, str) else None
        if entry is None:
            raise ResourceError(f"{describe(obj)}: apiVersion {api_version!r} kind {kind!r} is not supported yet "
                                f"(supported: {', '.join(self.supported())})")
        entry.validate(obj)

    def is_namespaced(self, obj: dict[str, Any]) -> bool:
        """Of a validated object."""
        return self._kinds[(obj["apiVersion"], obj["kind"])].namespaced

    def is_cluster_scoped(self, obj: dict[str, Any]) -> bool:
        """By kind alone (a delete request may carry only kind and name)."""
        return any(entry.kind == obj.get("kind") and not entry.namespaced for entry in self._kinds.values())
