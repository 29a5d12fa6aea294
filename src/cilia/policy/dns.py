"""DNS rules of a CiliumNetworkPolicy: `toPorts[].rules.dns[]` and the `toFQDNs[]` peers.

Both are lists of `{matchName: ...}` or `{matchPattern: ...}` (cilia.fqdn.matchpattern). A bad
name or pattern is rejected naming the field and why, so the previous policy stays enforced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cilia.fqdn.matchpattern import NameMatcher, check_name, check_pattern
from cilia.resources.fields import as_list, check_fields

if TYPE_CHECKING:
    from cilia.policy.common import Fail

_FIELDS = {"matchName", "matchPattern"}


def parse_matchers(raw: Any, where: str, fail: Fail, *, allow_empty: bool = False) -> tuple[NameMatcher, ...]:
    items = as_list(raw, where, fail)
    if not items and not allow_empty:
        raise fail(where, "needs at least one matchName or matchPattern")
    out: list[NameMatcher] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        check_fields(item, _FIELDS, at, fail)
        present = [f for f in ("matchName", "matchPattern") if item.get(f) is not None]
        if len(present) != 1:
            raise fail(at, "needs exactly one of matchName or matchPattern")
        kind = present[0]
        value = item[kind]
        if not isinstance(value, str):
            raise fail(f"{at}.{kind}", "must be a string")
        why = check_name(value) if kind == "matchName" else check_pattern(value)
        if why:
            raise fail(f"{at}.{kind}", why)
        out.append(NameMatcher(kind, value.strip()))  # type: ignore[arg-type]
    return tuple(out)


def parse_dns_rules(raw: Any, where: str, direction: str, fail: Fail) -> tuple[NameMatcher, ...]:
    """`toPorts[i].rules` holding `dns` -> its matchers (an egress rule only, as in Cilium)."""
    if direction != "egress":
        raise fail(f"{where}.dns", "DNS rules are egress rules (as in Cilium)")
    if len(raw) > 1:
        others = ", ".join(sorted(k for k in raw if k != "dns"))
        raise fail(where, f"DNS rules and {others} rules on the same port (one L7 protocol per port)")
    return parse_matchers(raw.get("dns"), f"{where}.dns", fail)
