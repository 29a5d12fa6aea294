"""Label selectors on a flow's endpoint labels, as Hubble's source_label/destination_label filters.

The selector language is Kubernetes' (`app=web`, `app!=web`, `app in (a,b)`, `app notin (a)`,
`app`, `!app`, `n>3`, comma for AND) with Cilium's label sources: a key may name its source
(`k8s:app`, `reserved:host`) and a key without one matches a label of any source. Flow labels are
`source:key=value` strings (`reserved:host` without a value)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ANY = "any"
_TOKEN = re.compile(r"\s*(==|!=|=|>|<|\(|\)|,|!|[^\s=!<>(),]+)")
_KEYWORDS = ("in", "notin")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class FlowLabel:
    source: str
    key: str
    value: str


def parse_label(text: str) -> FlowLabel:
    """Cilium's label syntax: `source:key=value`, `$key` for reserved, no source = unspec."""
    if text.startswith("$"):
        source, rest = "reserved", text[1:]
    else:
        source, sep, rest = text.partition(":")
        if not sep:
            source, rest = "unspec", text
    key, _, value = rest.partition("=")
    return FlowLabel(source, key, value)


class LabelArray:
    """A flow endpoint's labels, looked up by (source, key); source `any` matches every source."""

    def __init__(self, labels: Iterable[str]) -> None:
        self._labels = [parse_label(text) for text in labels]

    def lookup(self, source: str, key: str) -> str | None:
        for label in self._labels:
            if label.key == key and (source == ANY or label.source == source):
                return label.value
        return None


Requirement = Callable[[LabelArray], bool]


def _split_key(key: str) -> tuple[str, str]:
    source, sep, name = key.partition(":")
    return (source, name) if sep else (ANY, key)


def _requirement(key: str, op: str, values: list[str]) -> Requirement:
    source, name = _split_key(key)
    if not name:
        raise SelectorError(f"label selector key {key!r} is empty")

    def test(labels: LabelArray) -> bool:
        value = labels.lookup(source, name)
        if op == "exists":
            return value is not None
        if op == "!":
            return value is None
        if op in ("=", "==", "in"):
            return value is not None and value in values
        if op in ("!=", "notin"):
            return value is None or value not in values
        # > and <: both sides integers (Kubernetes' Gt/Lt)
        if value is None:
            return False
        try:
            have, want = int(value), int(values[0])
        except ValueError:
            return False
        return have > want if op == ">" else have < want

    return test


def parse_selector(selector: str) -> Callable[[LabelArray], bool]:
    """A selector -> a predicate; raises SelectorError on bad syntax."""
    tokens = [m.group(1) for m in _TOKEN.finditer(selector)]
    if "".join(tokens) != re.sub(r"\s+", "", selector):
        raise SelectorError(f"invalid label selector {selector!r}")
    requirements: list[Requirement] = []
    i = 0

    def take() -> str:
        nonlocal i
        if i >= len(tokens):
            raise SelectorError(f"label selector {selector!r} ends too early")
        i += 1
        return tokens[i - 1]

    while i < len(tokens):
        token = take()
        if token == "!":
            requirements.append(_requirement(take(), "!", []))
        else:
            key = token
            op = tokens[i] if i < len(tokens) else ","
            if op == ",":
                requirements.append(_requirement(key, "exists", []))
            elif op in ("=", "==", "!=", ">", "<"):
                i += 1
                value = tokens[i] if i < len(tokens) and tokens[i] != "," else ""
                if value:
                    i += 1
                if op in (">", "<") and not value.lstrip("-").isdigit():
                    raise SelectorError(f"label selector {selector!r}: {op} needs an integer")
                requirements.append(_requirement(key, op, [value]))
            elif op in _KEYWORDS:
                i += 1
                if take() != "(":
                    raise SelectorError(f"label selector {selector!r}: expected ( after {op}")
                values: list[str] = []
                while True:
                    item = take()
                    if item == ")":
                        break
                    if item == ",":
                        continue
                    values.append(item)
                requirements.append(_requirement(key, op, values))
            else:
                raise SelectorError(f"label selector {selector!r}: unexpected {op!r}")
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(f"label selector {selector!r}: unexpected {tokens[i]!r}")
            i += 1
    return lambda labels: all(req(labels) for req in requirements)
