"""Label selectors on a flow's endpoint labels, as Hubble's source_label/destination_label filters.

The selector language is Kubernetes' (`app=web`, `app==web`, `app!=web`, `app in (a,b)`,
`app notin (a)`, `app`, `!app`, `n>3`, `n<3`, comma for AND) with Cilium's label sources: a key
may name its source (`k8s:app`, `reserved:host`) and a key without one matches a label of any
source. Flow labels are `source:key=value` strings (`reserved:host` without a value).

Parsed as upstream does it: Cilium first rewrites each key's source prefix (`k8s:app` ->
`k8s.app`, `app` -> `any.app`; pkg/hubble/filters/labelparser.go), then the Kubernetes selector
parser reads the result (apimachinery labels: its lexer, grammar and validation: keys qualified
names, values label values, `()` is the empty value, `>`/`<` take an integer), and a key is looked
up in the flow's labels as Cilium's LabelArray does (the source before the first dot, `any`
matching every source)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

ANY = "any"
_RESERVED_PREFIX = "reserved."  # Cilium's LabelSourceReservedKeyPrefix


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class FlowLabel:
    source: str
    key: str
    value: str


def _parse(text: str, delim: str) -> FlowLabel:
    """Cilium's parseLabel: the source up to the first `delim` (`$key`: reserved), then key=value."""
    if text.startswith("$"):
        source, rest = "reserved", text[1:]
    elif delim in text:
        source, _, rest = text.partition(delim)
    elif delim != "." and text.startswith(_RESERVED_PREFIX):
        source, rest = "reserved", text[len(_RESERVED_PREFIX):]
    else:
        source, rest = "", text
    source = source or "unspec"
    key, eq, value = rest.partition("=")
    if eq and not key and source == "reserved":
        key, value = value, ""  # `reserved:=host`
    return FlowLabel(source, key, value)


def parse_label(text: str) -> FlowLabel:
    """Cilium's label syntax: `source:key=value`, `$key` for reserved, no source = unspec."""
    return _parse(text, ":")


class LabelArray:
    """A flow endpoint's labels, looked up by (source, key); source `any` matches every source."""

    def __init__(self, labels: Iterable[str]) -> None:
        self._labels = [parse_label(text) for text in labels]

    def lookup(self, source: str, key: str) -> str | None:
        """The value of the first label with this key (and source, unless `any`); None: none."""
        for label in self._labels:
            if label.key == key and (source == ANY or label.source == source):
                return label.value
        return None


# ----- Cilium's source-prefix translation (labelparser.go) ----------------------------------------
def translate_selector(selector: str) -> str:
    """`k8s:foo in (a, b), !bar` -> `k8s.foo in (a, b), !any.bar`."""
    out: list[str] = []
    i, n = 0, len(selector)
    while i < n:
        while i < n and (selector[i].isspace() or selector[i] == "!"):  # up to the key
            out.append(selector[i])
            i += 1
        start = i
        while i < n and not (selector[i].isspace() or selector[i] in "=!,"):
            i += 1
        key = selector[start:i]
        if ":" not in key:
            key = f"{ANY}:{key}"
        out.append(key.replace(":", ".", 1))
        nesting = 0
        while i < n:  # up to and including the comma that ends this requirement
            char = selector[i]
            out.append(char)
            i += 1
            if char == "(":
                nesting += 1
            elif char == ")":
                nesting -= 1
            elif char == "," and nesting == 0:
                break
    return "".join(out)


# ----- the Kubernetes selector parser (apimachinery pkg/labels/selector.go) ------------------------
_SPECIAL = "=!(),><"
_SYMBOLS = {"(": "(", ")": ")", ",": ",", "!": "!", "=": "=", "==": "==", "!=": "!=", ">": ">", "<": "<"}
_IDENT, _END = "identifier", "end of string"
_NAME = re.compile(r"\A(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)\Z")
_DNS_SUBDOMAIN = re.compile(r"\A[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*\Z")
_INT64 = re.compile(r"\A[+-]?[0-9]+\Z")


def _lex(text: str) -> list[tuple[str, str]]:
    """(kind, literal) tokens; kind is a symbol, `in`/`notin`, identifier or end of string."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in " \t\r\n":
            i += 1
        elif char in _SPECIAL:
            # the longest run of special characters that is a symbol (`!=`, `==`)
            j, best = i, None
            while j < n and text[j] in _SPECIAL:
                j += 1
                if text[i:j] in _SYMBOLS:
                    best = j
                elif best is not None:
                    break
            if best is None:
                raise SelectorError(f"error expected: keyword found '{text[i:j]}'")
            tokens.append((_SYMBOLS[text[i:best]], text[i:best]))
            i = best
        else:
            j = i
            while j < n and text[j] not in " \t\r\n" and text[j] not in _SPECIAL:
                j += 1
            word = text[i:j]
            tokens.append((word if word in ("in", "notin") else _IDENT, word))
            i = j
    tokens.append((_END, ""))
    return tokens


def _check_key(key: str) -> None:
    """validation.IsQualifiedName: an optional DNS-subdomain prefix and `/`, a name of <= 63."""
    prefix, slash, name = key.rpartition("/")
    if key.count("/") > 1 or (slash and not prefix):
        raise SelectorError(f"invalid label key {key!r}: a qualified name has at most one '/' after a prefix")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise SelectorError(f"invalid label key {key!r}: prefix must be a DNS-1123 subdomain")
    if not name or len(name) > 63 or not _NAME.match(name):
        raise SelectorError(f"invalid label key {key!r}: name part must be 63 characters or less, alphanumeric, "
                            "'-', '_' or '.', starting and ending with an alphanumeric character")


def _check_value(value: str) -> None:
    if value and (len(value) > 63 or not _NAME.match(value)):
        raise SelectorError(f"invalid label value {value!r}: must be 63 characters or less, empty or alphanumeric, "
                            "'-', '_' or '.', starting and ending with an alphanumeric character")


Requirement = Callable[[LabelArray], bool]


def _requirement(key: str, op: str, values: set[str]) -> Requirement:
    _check_key(key)
    if op in ("in", "notin") and not values:
        raise SelectorError("for 'in', 'notin' operators, values set can't be empty")
    if op in (">", "<"):
        [bound] = values
        if not _INT64.match(bound) or not -2**63 <= int(bound) < 2**63:
            raise SelectorError(f"for 'Gt', 'Lt' operators, the value must be an integer: {bound!r}")
    for value in values:
        _check_value(value)
    source, _, name = key.partition(".")  # Cilium: the source before the first dot (always there)

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
        if value is None or not _INT64.match(value) or not -2**63 <= int(value) < 2**63:
            return False  # > and <: the label's value must parse as an int64
        return int(value) > int(bound) if op == ">" else int(value) < int(bound)

    return test


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        kind, literal = self.tokens[self.pos]
        return (_IDENT, literal) if kind in ("in", "notin") else (kind, literal)  # Values context

    def take(self, values_context: bool = True) -> tuple[str, str]:
        kind, literal = self.tokens[self.pos] if not values_context else self.peek()
        if kind != _END:
            self.pos += 1
        return kind, literal

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while True:
            kind, literal = self.peek()
            if kind == _END:
                return requirements
            if kind not in (_IDENT, "!"):
                raise SelectorError(f"found '{literal}', expected: !, identifier, or 'end of string'")
            requirements.append(self.requirement())
            kind, literal = self.take()
            if kind == _END:
                return requirements
            if kind != ",":
                raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            if self.peek()[0] not in (_IDENT, "!"):
                raise SelectorError(f"found '{self.peek()[1]}', expected: identifier after ','")

    def requirement(self) -> Requirement:
        kind, key = self.take()
        negated = kind == "!"
        if negated:
            kind, key = self.take()
        if kind != _IDENT:
            raise SelectorError(f"found '{key}', expected: identifier")
        _check_key(key)
        if negated or self.peek()[0] in (_END, ","):
            return _requirement(key, "!" if negated else "exists", set())
        kind, literal = self.take(values_context=False)
        if kind in ("in", "notin"):
            return _requirement(key, kind, self.value_set())
        if kind in ("=", "==", "!=", ">", "<"):
            return _requirement(key, kind, self.exact_value())
        raise SelectorError(f"found '{literal}', expected: in, notin, =, ==, !=, gt, lt")

    def exact_value(self) -> set[str]:
        if self.peek()[0] in (_END, ","):
            return {""}
        kind, literal = self.take()
        if kind != _IDENT:
            raise SelectorError(f"found '{literal}', expected: identifier")
        return {literal}

    def value_set(self) -> set[str]:
        kind, literal = self.take()
        if kind != "(":
            raise SelectorError(f"found '{literal}', expected: '('")
        kind, literal = self.peek()
        if kind == ")":
            self.take()
            return {""}  # `()`: the empty value
        if kind not in (_IDENT, ","):
            raise SelectorError(f"found '{literal}', expected: ',', ')' or identifier")
        values = self.identifiers()
        kind, literal = self.take()
        if kind != ")":
            raise SelectorError(f"found '{literal}', expected: ')'")
        return values

    def identifiers(self) -> set[str]:
        """The list inside `( )`, as apimachinery's parseIdentifiersList: `(,a)`, `(a,)` and
        `(a,,b)` hold the empty value too; the closing `)` is left for the caller."""
        values: set[str] = set()
        while True:
            kind, literal = self.take()
            if kind == _IDENT:
                values.add(literal)
                after, after_literal = self.peek()
                if after == ")":
                    return values
                if after != ",":
                    raise SelectorError(f"found '{after_literal}', expected: ',' or ')'")
            elif kind == ",":
                if not values:
                    values.add("")
                after = self.peek()[0]
                if after == ")":
                    values.add("")
                    return values
                if after == ",":
                    self.take()
                    values.add("")
            else:
                raise SelectorError(f"found '{literal}', expected: ',', or identifier")


def parse_selector(selector: str) -> Callable[[LabelArray], bool]:
    """A selector -> a predicate; raises SelectorError on bad syntax (an empty one selects all)."""
    requirements = _Parser(translate_selector(selector)).parse()
    return lambda labels: all(req(labels) for req in requirements)
