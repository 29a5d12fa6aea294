"""Typed readers for the fields of a Kubernetes-shaped object, shared by the parsers of every kind
(policies, services, slices): each failure names the field and says what is wrong."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cilia.resources.parse import ResourceError

# fail(field, problem) -> the error to raise, naming the object (each parser makes its own)
Fail = Callable[[str, str], ResourceError]


def check_fields(raw: Any, allowed: set[str], where: str, fail: Fail, *, unsupported: dict[str, str] | None = None,
                 ) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise fail(where, "must be an object")
    for key in raw:
        if unsupported and key in unsupported:
            raise fail(f"{where}.{key}" if where else key, f"not supported yet: {unsupported[key]}")
        if key not in allowed:
            raise fail(f"{where}.{key}" if where else key, "unknown field")
    return raw


def as_list(raw: Any, where: str, fail: Fail) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise fail(where, "must be a list")
    return raw
