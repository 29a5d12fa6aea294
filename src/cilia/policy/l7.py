"""L7 HTTP rules of a CiliumNetworkPolicy (`toPorts[].rules.http[]`): parsing and matching.

A rule has `method`, `path`, `host` (each a regular expression matched against the whole value, as
Cilium anchors them), `headers` (`"Name: value"`, or `"Name"` for presence) and `headerMatches`
(`{name, value, mismatch}`: the header must have that exact value, or be present when no value is
given). A request matches a rule when every field the rule names matches; the rules of a port are
ORed. A headerMatch with a `mismatch` action does not fail the rule (as in Cilium): LOG reports
the mismatch in the access log, ADD adds the value to the header, DELETE removes the header,
REPLACE sets the header to the value (adding it when missing); the proxy applies these to the
request it forwards. The model is plain data
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

_HTTP_FIELDS = {"method", "path", "host", "headers", "headerMatches"}
_MATCH_FIELDS = {"name", "value", "mismatch"}
MISMATCH_ACTIONS = ("LOG", "ADD", "DELETE", "REPLACE")
_L7_LATER = {
    "secret": "headerMatches from a Secret are not implemented (give the value)",
    "regex": "headerMatches regex is not implemented (give an exact value)",
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
    # headerMatches: (name as given, exact value or "" = present, mismatch action or "" = fail the rule)
    header_matches: tuple[tuple[str, str, str], ...] = ()

    def mismatches(self, headers: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str]]:
        """The headerMatches this request's headers miss, (name, value, action) each."""
        out = []
        for name, value, action in self.header_matches:
            values = headers.get(name.lower(), ())
            if not values or (value and value not in values):
                out.append((name, value, action))
        return out

    def matches(self, method: str, path: str, host: str, headers: Mapping[str, Sequence[str]]) -> bool:
        """`headers`: lower-case name -> values. Patterns match the whole value (anchored); a
        headerMatch with a mismatch action never fails the rule."""
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
        return all(action for _n, _v, action in self.mismatches(headers))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "path": self.path, "host": self.host,
                               "headers": [[n, v] for n, v in self.headers]}
        if self.header_matches:
            out["header_matches"] = [list(m) for m in self.header_matches]
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> HttpRule:
        return cls(str(raw.get("method", "")), str(raw.get("path", "")), str(raw.get("host", "")),
                   tuple((str(n), None if v is None else str(v)) for n, v in raw.get("headers", ())),
                   tuple((str(n), str(v), str(a)) for n, v, a in raw.get("header_matches", ())))

    def __str__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in (("method", self.method), ("path", self.path), ("host", self.host)) if v]
        parts += [f"header {n}" + (f"={v!r}" if v is not None else "") for n, v in self.headers]
        parts += [f"headerMatch {n}" + (f"={v!r}" if v else "") + (f" mismatch {a}" if a else "")
                  for n, v, a in self.header_matches]
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


def _header_match(raw: Any, where: str, fail: Fail) -> tuple[str, str, str]:
    check_fields(raw, _MATCH_FIELDS, where, fail, unsupported=_L7_LATER)
    name, value, action = raw.get("name"), raw.get("value", ""), raw.get("mismatch", "")
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise fail(f"{where}.name", f"{name!r} is not a header name")
    if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
        raise fail(f"{where}.value", "must be a string without CR, LF or NUL")
    if action not in ("", *MISMATCH_ACTIONS):
        raise fail(f"{where}.mismatch", f"{action!r} is not one of {', '.join(MISMATCH_ACTIONS)}")
    if action in ("ADD", "REPLACE") and not value:
        raise fail(f"{where}.value", f"mismatch {action} needs a value to set")
    return name, value, action


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
        matches = tuple(_header_match(m, f"{at}.headerMatches[{j}]", fail)
                        for j, m in enumerate(as_list(item.get("headerMatches"), f"{at}.headerMatches", fail)))
        rules.append(HttpRule(_regex(item.get("method"), f"{at}.method", fail),
                              _regex(item.get("path"), f"{at}.path", fail),
                              _regex(item.get("host"), f"{at}.host", fail), headers, matches))
    return tuple(rules)
