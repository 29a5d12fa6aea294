"""The rules file the agent writes and the proxy reads, and the verdict on one request.

One file per endpoint with L7 rules, `<NodePaths.proxy_policy_dir>/<endpoint id>.json`, written
atomically (rename) before the endpoint's REDIRECT map entries go live and removed after they are
gone. Its content is the endpoint's allow entries of each direction that has an L7 rule
(`cilia.policy.mapstate.ProxyRules`; a direction without one is `[]`: the proxy does not judge it):

    {"version": 2, "endpoint_id": 7, "audit": false,
     "ingress": [{"rule_id": 12, "identities": [1234] | null,
                  "policy": {"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "rule1"},
                  "ports": [{"protocol": 6, "low": 80, "high": 80, "http": [{"method": "POST", ...}] | null}]}],
     "egress": []}

A request to or from peer identity I on port P passes a direction when some entry names I (or
every identity) and P, and that port has no HTTP rules (plain L4 allow) or one of them matches.
No file, a file that does not parse, no such entry: denied (fail closed). `audit`: a denied
request is forwarded all the same and reported as AUDIT (policy-audit-mode).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cilia.policy.l7 import HttpRule
from cilia.policy.mapstate import ProxyRules
from cilia.proxy.accesslog import PolicyRef
from cilia.proxy.rulefiles import RuleFileStore, remove_rules_file, rules_file, write_rules_file

VERSION = 2
Direction = Literal["ingress", "egress"]
log = logging.getLogger(__name__)


policy_file = rules_file


def write_policy(directory: Path, endpoint_id: int, rules: ProxyRules) -> None:
    write_rules_file(directory, endpoint_id, VERSION, rules.to_json())


remove_policy = remove_rules_file


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
    policy: PolicyRef | None


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the request target as sent (HTTP/2: `:path`)
    host: str  # Host, or HTTP/2's `:authority`
    headers: Mapping[str, Sequence[str]]  # lower-case name -> values
    protocol: str = "HTTP/1.1"
    header_list: tuple[tuple[str, str], ...] = ()  # as sent, in order (for the access log)

    @property
    def url(self) -> str:
        """Hubble's `http.url`: scheme, host and the request target."""
        return f"http://{self.host}{self.path}" if self.path.startswith("/") else self.path


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule_id: int  # the entry that allowed it; 0 when denied
    policy: PolicyRef | None = None  # the policy of that entry
    mismatches: tuple[tuple[str, str, str], ...] = ()  # the matching rule's headerMatches missed, with actions


def _entries(raw: Any) -> tuple[_Entry, ...]:
    entries = []
    for e in raw:
        ids = e["identities"]
        ports = tuple(_Port(int(p["protocol"]), int(p["low"]), int(p["high"]),
                            None if p["http"] is None else tuple(HttpRule.from_json(r) for r in p["http"]))
                      for p in e["ports"])
        ref = e.get("policy")
        policy = None if ref is None else PolicyRef(str(ref["kind"]), str(ref["namespace"]), str(ref["name"]))
        entries.append(_Entry(int(e["rule_id"]), None if ids is None else frozenset(int(i) for i in ids), ports,
                              policy))
    return tuple(entries)


class EndpointPolicy:
    def __init__(self, ingress: Sequence[_Entry], egress: Sequence[_Entry] = (), audit: bool = False,
                 broken: bool = False) -> None:
        self.ingress = tuple(ingress)
        self.egress = tuple(egress)
        self.audit = audit
        self.broken = broken  # the rules could not be read: judges both directions and denies
        # whether a verdict may depend on more than (method, path, host): a rule names headers
        self.reads_headers = any(r.headers or r.header_matches for e in self.ingress + self.egress for p in e.ports
                                 for r in p.http or ())

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EndpointPolicy:
        if raw.get("version") != VERSION:
            raise ValueError(f"unknown rules file version {raw.get('version')!r}")
        return cls(_entries(raw["ingress"]), _entries(raw["egress"]), bool(raw.get("audit", False)))

    def judges(self, direction: Direction) -> bool:
        """Whether the direction has L7 rules (an empty direction is not the proxy's to judge)."""
        return self.broken or bool(self.ingress if direction == "ingress" else self.egress)

    def judge(self, identity: int, protocol: int, port: int, request: Request,
              direction: Direction = "ingress") -> Verdict:
        """`identity`: the peer's (the client's on ingress, the server's on egress)."""
        for entry in self.ingress if direction == "ingress" else self.egress:
            if entry.identities is not None and identity not in entry.identities:
                continue
            for p in entry.ports:
                if p.protocol not in (0, protocol) or not p.low <= port <= p.high:
                    continue
                if p.http is None:
                    return Verdict(True, entry.rule_id, entry.policy)
                for rule in p.http:
                    if rule.matches(request.method, request.path, request.host, request.headers):
                        return Verdict(True, entry.rule_id, entry.policy, tuple(rule.mismatches(request.headers)))
        return Verdict(False, 0)

    def covering(self, identity: int, protocol: int, port: int, direction: Direction) -> tuple[PolicyRef, ...]:
        """The policies of the entries that name this peer and port (whose HTTP rules a denied request missed)."""
        out: list[PolicyRef] = []
        for entry in self.ingress if direction == "ingress" else self.egress:
            if entry.policy is None or entry.policy in out:
                continue
            if entry.identities is not None and identity not in entry.identities:
                continue
            if any(p.protocol in (0, protocol) and p.low <= port <= p.high for p in entry.ports):
                out.append(entry.policy)
        return tuple(out)


NO_RULES = EndpointPolicy(())  # no file: the endpoint has no L7 rule, the proxy judges neither direction
DENY_ALL = EndpointPolicy((), broken=True)  # a file that does not parse: fail closed


class PolicyStore(RuleFileStore[EndpointPolicy]):
    """Reads an endpoint's file when it changed (mtime and size), keeps the last good one."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, EndpointPolicy.from_json, missing=NO_RULES, broken=DENY_ALL,
                         broken_means="denying its requests")


# ----- one request, judged by every side that has L7 rules ------------------------------------------
JudgeVerdict = Literal["FORWARDED", "DROPPED", "AUDIT"]


@dataclass(frozen=True)
class Parties:
    """Who talks to whom on a proxied connection. An endpoint id is 0 when that side is not a local pod."""

    client_identity: int
    server_identity: int
    client_endpoint: int
    server_endpoint: int
    protocol: int
    port: int  # the server's (original destination) port


@dataclass(frozen=True)
class Judgement:
    verdict: JudgeVerdict
    policies: tuple[PolicyRef, ...]  # allowed: the policies that allowed it; denied: the ones whose rules it missed
    endpoint_id: int  # the endpoint whose policy decided
    ingress: bool  # that endpoint's ingress (True) or egress (False)
    # headerMatches the request missed whose mismatch action lets it pass: (name, value, LOG|ADD|DELETE|REPLACE)
    mismatches: tuple[tuple[str, str, str], ...] = ()

    @property
    def forward(self) -> bool:
        return self.verdict != "DROPPED"


def judge_request(store: PolicyStore, parties: Parties, request: Request) -> Judgement:
    """The client's egress rules (when it has L7 rules there), then the server's ingress rules: both
    must allow. A connection no side claims is denied (the datapath redirected it for rules the
    proxy does not have: fail closed). In audit mode a side's denial is reported, not enforced."""
    own = store.get(parties.client_endpoint) if parties.client_endpoint else None
    theirs = store.get(parties.server_endpoint) if parties.server_endpoint else None
    return _judge(own, theirs, parties, request)


def _judge(own: EndpointPolicy | None, theirs: EndpointPolicy | None, parties: Parties,
           request: Request) -> Judgement:
    sides: list[tuple[Direction, int, EndpointPolicy, int]] = []
    if own is not None and own.judges("egress"):
        sides.append(("egress", parties.client_endpoint, own, parties.server_identity))
    if theirs is not None and theirs.judges("ingress"):
        sides.append(("ingress", parties.server_endpoint, theirs, parties.client_identity))
    if not sides:
        return Judgement("DROPPED", (), parties.server_endpoint or parties.client_endpoint, True)
    allowed_by: list[PolicyRef] = []
    mismatches: list[tuple[str, str, str]] = []
    audited = False
    for direction, endpoint_id, policy, peer in sides:
        verdict = policy.judge(peer, parties.protocol, parties.port, request, direction)
        if verdict.allowed:
            if verdict.policy is not None and verdict.policy not in allowed_by:
                allowed_by.append(verdict.policy)
            mismatches += verdict.mismatches
            continue
        missed = policy.covering(peer, parties.protocol, parties.port, direction)
        if not policy.audit:
            return Judgement("DROPPED", missed, endpoint_id, direction == "ingress")
        audited = True
        allowed_by += [p for p in missed if p not in allowed_by]
    direction, endpoint_id = sides[-1][0], sides[-1][1]
    return Judgement("AUDIT" if audited else "FORWARDED", tuple(allowed_by), endpoint_id, direction == "ingress",
                     tuple(mismatches))


class ConnectionJudge:
    """judge_request for one connection's parties, remembering its verdicts: while the rules of
    both sides are the same objects (the store hands out a new one when a file changed) and no
    rule of theirs names headers, a verdict depends only on (method, path, host), so a repeated
    one (keep-alive clients asking the same) is looked up, not matched again. Every request is
    still judged on its own, by the rules current at that request."""

    MEMO = 256  # verdicts kept per connection (beyond: judged every time)

    def __init__(self, store: PolicyStore, parties: Parties) -> None:
        self.store = store
        self.parties = parties
        self._own: EndpointPolicy | None = None
        self._theirs: EndpointPolicy | None = None
        self._by_headers = True  # the memo is off until the first request's rules are known
        self._memo: dict[tuple[str, str, str], Judgement] = {}
        self._stamp: bytes | None = None  # the store's generation when both sides' rules were last got

    def __call__(self, request: Request) -> Judgement:
        parties = self.parties
        stamp = self.store.stamp()
        if stamp is not None and stamp == self._stamp:  # no rules file changed since: the same rules
            own, theirs = self._own, self._theirs
        else:
            own = self.store.get(parties.client_endpoint) if parties.client_endpoint else None
            theirs = self.store.get(parties.server_endpoint) if parties.server_endpoint else None
            # a broken file is read again at every request (RuleFileStore): never kept here either
            self._stamp = None if DENY_ALL in (own, theirs) else stamp
        if own is not self._own or theirs is not self._theirs:
            self._own, self._theirs = own, theirs
            self._memo.clear()
            self._by_headers = any(p is not None and p.reads_headers for p in (own, theirs))
        if self._by_headers:
            return _judge(own, theirs, parties, request)
        key = (request.method, request.path, request.host)
        judgement = self._memo.get(key)
        if judgement is None:
            judgement = _judge(own, theirs, parties, request)
            if len(self._memo) < self.MEMO:
                self._memo[key] = judgement
        return judgement


def apply_mismatches(headers: list[tuple[bytes, bytes]],
                     mismatches: Sequence[tuple[str, str, str]]) -> list[tuple[bytes, bytes]]:
    """The request headers to send on after the headerMatches mismatch actions (LOG changes nothing)."""
    out = list(headers)
    for name, value, action in mismatches:
        key = name.lower().encode("latin-1")
        if action in ("DELETE", "REPLACE"):
            out = [(n, v) for n, v in out if n.lower() != key]
        if action in ("ADD", "REPLACE"):
            out.append((name.encode("latin-1") if not name.startswith(":") else key, value.encode("latin-1")))
    return out
