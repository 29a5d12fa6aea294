"""The DNS rules file the agent writes and the DNS proxy reads, and the verdict on one query.

One file per endpoint with DNS rules, `<NodePaths.dns_policy_dir>/<endpoint id>.json`, written
atomically before the endpoint's REDIRECT entries go live and removed after they are gone. Its
content is the endpoint's egress allow entries (`cilia.policy.mapstate.dns_entries`):

    {"version": 1, "endpoint_id": 7, "entries": [
       {"rule_id": 12, "identities": [16777217] | null,
        "ports": [{"protocol": 17, "low": 53, "high": 53, "dns": ["matchPattern:*.example.test."] | null}]}]}

A query from the endpoint to a server of identity I on port P for name N passes when some entry
names I (or every identity) and P, and that port has no DNS rules (plain L4 allow) or one of its
matchers matches N. No file, a file that does not parse, no such entry: refused (fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cilia.fqdn.matchpattern import NameMatcher
from cilia.policy.mapstate import ProxyEntry
from cilia.proxy.rulefiles import RuleFileStore, remove_rules_file, rules_file, write_rules_file

VERSION = 1
log = logging.getLogger(__name__)


policy_file = rules_file


def write_policy(directory: Path, endpoint_id: int, entries: Iterable[ProxyEntry]) -> None:
    out = []
    for e in entries:
        raw = e.to_json()
        for port in raw["ports"]:
            rules = port.pop("http")
            port["dns"] = None if rules is None else [r["dns"] for r in rules]
        out.append(raw)
    write_rules_file(directory, endpoint_id, VERSION, {"entries": out})


remove_policy = remove_rules_file


@dataclass(frozen=True)
class _Port:
    protocol: int
    low: int
    high: int
    names: tuple[NameMatcher, ...] | None


@dataclass(frozen=True)
class _Entry:
    rule_id: int
    identities: frozenset[int] | None
    ports: tuple[_Port, ...]


@dataclass(frozen=True)
class DnsVerdict:
    allowed: bool
    rule_id: int  # the entry that allowed it; 0 when refused


class DnsPolicy:
    def __init__(self, entries: Sequence[_Entry]) -> None:
        self.entries = entries

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DnsPolicy:
        if raw.get("version") != VERSION:
            raise ValueError(f"unknown DNS rules file version {raw.get('version')!r}")
        entries = []
        for e in raw["entries"]:
            ids = e["identities"]
            ports = tuple(_Port(int(p["protocol"]), int(p["low"]), int(p["high"]),
                                None if p["dns"] is None else tuple(NameMatcher.from_key(k) for k in p["dns"]))
                          for p in e["ports"])
            entries.append(_Entry(int(e["rule_id"]), None if ids is None else frozenset(int(i) for i in ids), ports))
        return cls(entries)

    def judge(self, server_identity: int, protocol: int, port: int, name: str) -> DnsVerdict:
        for entry in self.entries:
            if entry.identities is not None and server_identity not in entry.identities:
                continue
            for p in entry.ports:
                if p.protocol not in (0, protocol) or not p.low <= port <= p.high:
                    continue
                if p.names is None or any(m.matches(name) for m in p.names):
                    return DnsVerdict(True, entry.rule_id)
        return DnsVerdict(False, 0)


REFUSE_ALL = DnsPolicy(())


class DnsPolicyStore(RuleFileStore[DnsPolicy]):
    """Reads an endpoint's file when it changed (mtime and size), keeps the last good one."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, DnsPolicy.from_json, missing=REFUSE_ALL, broken=REFUSE_ALL,
                         broken_means="refusing its queries")
