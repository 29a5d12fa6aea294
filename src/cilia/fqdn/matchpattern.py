"""Cilium's DNS name matching (`matchName`, `matchPattern`) for `rules.dns[]` and `toFQDNs[]`.

Semantics as Cilium 1.19 documents and validates them (interface facts, not its code):
- names compare lower-case, as fully qualified names (a trailing dot is added);
- `matchName` is a literal name of DNS characters (`[-a-zA-Z0-9_]` labels, dots);
- `matchPattern` may use `*`: zero or more DNS characters inside one label (`*.cdn.example.test`
  matches `a.cdn.example.test` but neither `cdn.example.test` nor `a.b.cdn.example.test`);
  a leading `**.` (two or more stars, then a dot) matches one or more whole labels
  (`**.example.test` matches `a.example.test` and `a.b.example.test`, not `example.test`);
  a pattern of stars only (`*`, `**.`) matches every name, and the root `.`;
- only `[-a-zA-Z0-9_.*]` are allowed, at most 255 characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

MAX_LENGTH = 255
_DNS_CHARS = "[-a-z0-9_]"
_PATTERN_CHARS = re.compile(r"^[-a-zA-Z0-9_.*]+$")
_NAME = re.compile(r"^([-a-zA-Z0-9_]+[.]?)+$")
_ALL_STARS = re.compile(r"^[*]+[.]?$")
_MATCH_ALL = rf"^(({_DNS_CHARS}+[.])+|[.])$"
_LABELS = rf"({_DNS_CHARS}+([.]{_DNS_CHARS}+)*)[.]"  # one or more whole labels and their dot

Kind = Literal["matchName", "matchPattern"]


def fqdn(name: str) -> str:
    """Lower-case, with the trailing dot (how names are compared and shown)."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def check_name(value: str) -> str | None:
    """Why `value` is no valid matchName, or None."""
    text = value.strip()
    if not text:
        return "must not be empty"
    if len(text) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if not _NAME.match(text):
        return (f"invalid characters in matchName {value!r}: only 0-9, a-z, A-Z and ., -, _ are allowed "
                "(labels separated by single dots)")
    return None


def check_pattern(value: str) -> str | None:
    """Why `value` is no valid matchPattern, or None."""
    text = value.strip()
    if not text:
        return "must not be empty"
    if len(text) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    if not _PATTERN_CHARS.match(text):
        return f"invalid characters in matchPattern {value!r}: only 0-9, a-z, A-Z and ., -, _ and * are allowed"
    return None


def matches_everything(pattern: str) -> bool:
    """A pattern of stars only (`*`, `**.`): every name, and the root."""
    return _ALL_STARS.match(pattern.strip().lower()) is not None


def pattern_regex(pattern: str) -> str:
    """The anchored regular expression a matchPattern stands for (on fqdn() names)."""
    text = pattern.strip().lower()
    if _ALL_STARS.match(text):
        return _MATCH_ALL
    text = fqdn(text)
    out = ["^"]
    i = 0
    stars = len(text) - len(text.lstrip("*"))
    if stars >= 2 and text[stars:stars + 1] == ".":
        out.append(_LABELS)
        i = stars + 1
    while i < len(text):
        c = text[i]
        if c == "*":
            while i + 1 < len(text) and text[i + 1] == "*":
                i += 1
            out.append(f"{_DNS_CHARS}*")
        elif c == ".":
            out.append("[.]")
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return "".join(out)


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern_regex(pattern))


@dataclass(frozen=True, order=True)
class NameMatcher:
    """One `matchName` or `matchPattern` (value as written, compared in fqdn() form)."""

    kind: Kind
    value: str

    def matches(self, name: str) -> bool:
        target = fqdn(name)
        if self.kind == "matchName":
            return target == fqdn(self.value)
        return _compiled(self.value).match(target) is not None

    @property
    def key(self) -> str:
        """Stable text: the FQDN selector's label value and its name in files (`matchPattern:*.x.`)."""
        value = self.value.strip().lower()
        return f"{self.kind}:{value if self.kind == 'matchPattern' and _ALL_STARS.match(value) else fqdn(value)}"

    @classmethod
    def from_key(cls, key: str) -> NameMatcher:
        kind, _, value = key.partition(":")
        if kind not in ("matchName", "matchPattern") or not value:
            raise ValueError(f"not an FQDN selector key: {key!r}")
        return cls(kind, value)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.kind} {self.value}"
