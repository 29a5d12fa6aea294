"""Label selectors (matchLabels + matchExpressions) evaluated against identity label sets.

Keys follow Cilium: `k8s:app` names the label source, a bare `app` (or `any:app`) matches a
label of that key from any source. A selector matches reserved identities (host, world, ...)
only when it asks for a `reserved:` label explicitly, so `{}` means "every pod", never "world".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cilia.identity.labels import Label, LabelSet

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, order=True)
class Requirement:
    source: str  # "any" or a label source ("k8s", "reserved", ...)
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        found = [label.value for label in labels if label.key == self.key
                 and (self.source == "any" or label.source == self.source)]
        if self.operator == "Exists":
            return bool(found)
        if self.operator == "DoesNotExist":
            return not found
        if self.operator == "In":
            return any(value in self.values for value in found)
        return not any(value in self.values for value in found)  # NotIn: absent counts as not in

    def __str__(self) -> str:
        key = self.key if self.source == "any" else f"{self.source}:{self.key}"
        if self.operator == "In" and len(self.values) == 1:
            return f"{key}={self.values[0]}"
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{'!' if self.operator == 'DoesNotExist' else ''}{key}"
        return f"{key} {self.operator.lower()} ({','.join(self.values)})"


@dataclass(frozen=True, order=True)
class Selector:
    """All requirements must hold (AND). No requirements = every pod."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: LabelSet) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def selects_reserved(self) -> bool:
        return any(r.source == "reserved" and r.operator in ("In", "Exists") for r in self.requirements)

    def names_key(self, key: str) -> bool:
        return any(r.key == key for r in self.requirements)

    def with_requirements(self, extra: Iterable[Requirement]) -> Selector:
        return Selector(tuple(sorted(set(self.requirements) | set(extra))))

    def __str__(self) -> str:
        return "{" + ", ".join(str(r) for r in self.requirements) + "}" if self.requirements else "{} (all pods)"


def split_key(key: str) -> tuple[str, str]:
    source, sep, rest = key.partition(":")
    if sep and source in ("k8s", "reserved", "cidr", "unspec", "any", "container"):
        return source, rest
    return "any", key


def equals(key: str, value: str, source: str = "k8s") -> Requirement:
    return Requirement(source, key, "In", (value,))


def parse_selector(raw: Any, where: str, fail: Any, *, key_map: Any = None) -> Selector:
    """A Kubernetes LabelSelector. `fail(field, problem)` builds the error; `key_map` rewrites keys
    (a namespaceSelector's `team` becomes the pod identity label for the namespace's `team`)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise fail(where, "must be a label selector object (matchLabels / matchExpressions)")
    unknown = set(raw) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise fail(f"{where}.{sorted(unknown)[0]}", "unknown field")
    requirements: list[Requirement] = []
    match_labels = raw.get("matchLabels") or {}
    if not isinstance(match_labels, dict):
        raise fail(f"{where}.matchLabels", "must be a map of strings")
    for key, value in match_labels.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise fail(f"{where}.matchLabels.{key}", "keys and values must be strings (quote numbers and booleans)")
        requirements.append(_requirement(key, "In", (value,), key_map))
    expressions = raw.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise fail(f"{where}.matchExpressions", "must be a list")
    for index, expression in enumerate(expressions):
        at = f"{where}.matchExpressions[{index}]"
        if not isinstance(expression, dict):
            raise fail(at, "must be an object with key, operator and values")
        unknown = set(expression) - {"key", "operator", "values"}
        if unknown:
            raise fail(f"{at}.{sorted(unknown)[0]}", "unknown field")
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values")
        if not isinstance(key, str) or not key:
            raise fail(f"{at}.key", "is required")
        if operator not in OPERATORS:
            raise fail(f"{at}.operator", f"{operator!r} is not one of {', '.join(OPERATORS)}")
        if operator in ("In", "NotIn"):
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise fail(f"{at}.values", f"operator {operator} needs a non-empty list of strings")
        elif values:
            raise fail(f"{at}.values", f"operator {operator} takes no values")
        requirements.append(_requirement(key, operator, tuple(values or ()), key_map))
    return Selector(tuple(sorted(set(requirements))))


def _requirement(key: str, operator: str, values: tuple[str, ...], key_map: Any) -> Requirement:
    if key_map is not None:
        return key_map(key, operator, values)  # type: ignore[no-any-return]
    source, name = split_key(key)
    return Requirement(source, name, operator, tuple(sorted(values)))


def labels_of(texts: Iterable[str]) -> LabelSet:
    """`k8s:app=web` strings (or bare `app=web`, read as k8s) into a LabelSet."""
    labels = []
    for text in texts:
        label = Label.parse(text)
        labels.append(Label("k8s", label.key, label.value) if label.source == "unspec" else label)
    return LabelSet(labels)
