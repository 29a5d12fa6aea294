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


def is_number(text: str) -> bool:
    """A short run of ASCII digits: str.isdigit() also takes '²' (which int() refuses) and '٣'
    (which it reads as 3), and int() of 4,300 digits or more raises."""
    return len(text) <= 18 and text.isascii() and text.isdigit()


def as_list(raw: Any, where: str, fail: Fail) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise fail(where, "must be a list")
    return raw


def object_name(obj: dict[str, Any], fail: Fail, *, namespaced: bool) -> tuple[str, str]:
    """(namespace, name) of an object ("" namespace for a cluster-scoped one; "default" when a
    namespaced one names none): what a parser needs even when called without validate_common."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise fail("metadata", "is required and must be an object")
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        raise fail("metadata.name", "is required and must be a string")
    if not namespaced:
        return "", name
    namespace = metadata.get("namespace", "default")
    if not isinstance(namespace, str) or not namespace:
        raise fail("metadata.namespace", "must be a string")
    return namespace, name
