"""The rules file the agent writes and the proxy reads, and the verdict on one request.

One file per endpoint with L7 rules, `<NodePaths.proxy_policy_dir>/<endpoint id>.json`, written
atomically (rename) before the endpoint's REDIRECT map entries go live and removed after they are
gone. Its content is the endpoint's ingress allow entries (`cilia.policy.mapstate.ProxyEntry`):

    {"version": 1, "endpoint_id": 7, "entries": [
       {"rule_id": 12, "identities": [1234] | null,
        "ports": [{"protocol": 6, "low": 80, "high": 80, "http": [{"method": "POST", ...}] | null}]}]}

A request from identity I to port P passes when some entry names I (or every identity) and P,
and that port has no HTTP rules (plain L4 allow) or one of them matches. No file, a file that
does not parse, no such entry: denied (fail closed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cilia.policy.l7 import HttpRule
from cilia.policy.mapstate import ProxyEntry

VERSION = 1
log = logging.getLogger(__name__)


def policy_file(directory: Path, endpoint_id: int) -> Path:
    return directory / f"{endpoint_id}.json"


def write_policy(directory: Path, endpoint_id: int, entries: Iterable[ProxyEntry]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    target = policy_file(directory, endpoint_id)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": VERSION, "endpoint_id": endpoint_id,
                               "entries": [e.to_json() for e in entries]}))
    os.replace(tmp, target)


def remove_policy(directory: Path, endpoint_id: int) -> None:
    policy_file(directory, endpoint_id).unlink(missing_ok=True)


@dataclass(frozen=True)
class _Port:
    protocol: int
    low: int
    high: int
    http: tuple[HttpRule, ...] | None


@dataclass(frozen=True)
class _Entry:
    rule_id: int
    identities: frozenset[int] | None
    ports: tuple[_Port, ...]


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the request target as sent
    host: str
    headers: Mapping[str, Sequence[str]]  # lower-case name -> values


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule_id: int  # the entry that allowed it; 0 when denied


class EndpointPolicy:
    def __init__(self, entries: Sequence[_Entry]) -> None:
        self.entries = entries

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EndpointPolicy:
        if raw.get("version") != VERSION:
            raise ValueError(f"unknown rules file version {raw.get('version')!r}")
        entries = []
        for e in raw["entries"]:
            ids = e["identities"]
            ports = tuple(_Port(int(p["protocol"]), int(p["low"]), int(p["high"]),
                                None if p["http"] is None else tuple(HttpRule.from_json(r) for r in p["http"]))
                          for p in e["ports"])
            entries.append(_Entry(int(e["rule_id"]), None if ids is None else frozenset(int(i) for i in ids), ports))
        return cls(entries)

    def judge(self, identity: int, protocol: int, port: int, request: Request) -> Verdict:
        for entry in self.entries:
            if entry.identities is not None and identity not in entry.identities:
                continue
            for p in entry.ports:
                if p.protocol not in (0, protocol) or not p.low <= port <= p.high:
                    continue
                if p.http is None or any(r.matches(request.method, request.path, request.host, request.headers)
                                         for r in p.http):
                    return Verdict(True, entry.rule_id)
        return Verdict(False, 0)


DENY_ALL = EndpointPolicy(())


class PolicyStore:
    """Reads an endpoint's file when it changed (mtime and size), keeps the last good one."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[int, tuple[tuple[int, int], EndpointPolicy]] = {}

    def get(self, endpoint_id: int) -> EndpointPolicy:
        path = policy_file(self.directory, endpoint_id)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._cache.pop(endpoint_id, None)
            return DENY_ALL
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(endpoint_id)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            policy = EndpointPolicy.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("rules of endpoint %d (%s) unreadable, denying its requests: %s", endpoint_id, path, exc)
            return DENY_ALL
        self._cache[endpoint_id] = (stamp, policy)
        return policy
