"""L7 HTTP rules of a CiliumNetworkPolicy (`toPorts[].rules.http[]`): parsing and matching.

A rule has `method`, `path`, `host` (each a regular expression matched against the whole value, as
Cilium anchors them) and `headers` (`"Name: value"`, or `"Name"` for presence). A request matches a
rule when every field the rule names matches; the rules of a port are ORed. The model is plain data
(no compiled regexes inside), so it serialises to the proxy's rules file and back unchanged.

Cilium hands the regexes to Envoy (RE2, ECMAScript-like); Python's `re` is used here with the
features both share: a pattern `re` refuses is rejected when the policy is applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cilia.resources.fields import as_list, check_fields

if TYPE_CHECKING:  # cilia.policy.common imports the rule model, which imports this module
    from cilia.policy.common import Fail

_HTTP_FIELDS = {"method", "path", "host", "headers"}
_L7_LATER = {
    "headerMatches": "headerMatches (header mismatch actions) is not implemented yet",
    "dns": "DNS rules need the DNS proxy (not implemented yet)",
    "kafka": "Kafka rules are not implemented",
    "l7proto": "generic L7 parsers are not implemented",
    "l7": "generic L7 parsers are not implemented",
}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110 token)
MAX_PATTERN = 1024


@dataclass(frozen=True, order=True)
class HttpRule:
    method: str = ""  # regex; "" = any
    path: str = ""
    host: str = ""
    headers: tuple[tuple[str, str | None], ...] = ()  # (lower-case name, exact value or None = present)

    def matches(self, method: str, path: str, host: str, headers: Mapping[str, Sequence[str]]) -> bool:
        """`headers`: lower-case name -> values. Patterns match the whole value (anchored)."""
        if self.method and not _compiled(self.method).fullmatch(method):
            return False
        if self.path and not _compiled(self.path).fullmatch(path):
            return False
        if self.host and not _compiled(self.host).fullmatch(host):
            return False
        for name, value in self.headers:
            values = headers.get(name, ())
            if not values or (value is not None and value not in values):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "host": self.host,
                "headers": [[n, v] for n, v in self.headers]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> HttpRule:
        return cls(str(raw.get("method", "")), str(raw.get("path", "")), str(raw.get("host", "")),
                   tuple((str(n), None if v is None else str(v)) for n, v in raw.get("headers", ())))

    def __str__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("method", self.method), ("path", self.path), ("host", self.host)) if v]
        parts += [f"header {n}" + (f"={v!r}" if v is not None else "") for n, v in self.headers]
        return "http(" + ", ".join(parts) + ")"


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regex(raw: Any, where: str, fail: Fail) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise fail(where, "must be a string (a regular expression)")
    if len(raw) > MAX_PATTERN:
        raise fail(where, f"longer than {MAX_PATTERN} characters")
    try:
        _compiled(raw)
    except (re.error, RecursionError, OverflowError) as exc:
        raise fail(where, f"invalid regular expression {raw!r}: {exc}") from None
    return raw


def _header(raw: Any, where: str, fail: Fail) -> tuple[str, str | None]:
    if not isinstance(raw, str):
        raise fail(where, 'must be a string "Name: value" or "Name"')
    name, sep, value = raw.partition(":")
    name = name.strip()
    if not _TOKEN.match(name):
        raise fail(where, f"{raw!r} does not start with a header name")
    if any(c in value for c in "\r\n\0"):
        raise fail(where, "a header value may not contain CR, LF or NUL")
    return name.lower(), value.strip() if sep else None


def parse_l7_rules(raw: Any, where: str, fail: Fail) -> tuple[HttpRule, ...]:
    """`toPorts[i].rules` -> the HTTP rules (at least one). Other L7 kinds are rejected by name."""
    check_fields(raw, {"http"}, where, fail, unsupported=_L7_LATER)
    items = as_list(raw.get("http"), f"{where}.http", fail)
    if not items:
        raise fail(f"{where}.http", "needs at least one rule (an empty list would allow nothing)")
    rules: list[HttpRule] = []
    for i, item in enumerate(items):
        at = f"{where}.http[{i}]"
        check_fields(item, _HTTP_FIELDS, at, fail, unsupported=_L7_LATER)
        headers = tuple(_header(h, f"{at}.headers[{j}]", fail)
                        for j, h in enumerate(as_list(item.get("headers"), f"{at}.headers", fail)))
        rules.append(HttpRule(_regex(item.get("method"), f"{at}.method", fail),
                              _regex(item.get("path"), f"{at}.path", fail),
                              _regex(item.get("host"), f"{at}.host", fail), headers))
    return tuple(rules)
