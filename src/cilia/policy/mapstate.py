"""An endpoint's policy as datapath map entries, compressed so identities and ports do not multiply.

Cilium's per-endpoint policy map holds one entry per (identity, port) pair, so 1,000 peer
identities on 20 ports need 20,000 entries and overflow its 16k map. Here identities that the
endpoint's rules treat alike share an *identity class*:

    selector map  (endpoint, direction, identity) -> class     one entry per identity that matters
    port map      (endpoint, direction, class, protocol, port prefix) -> verdict, rule id   (LPM)

Identities matched only by wildcard peers (entity `all`, L4-only rules) need no selector entry:
they fall into class 0. Port ranges become a handful of LPM prefixes, and an any-protocol rule
is one prefix. Deny wins over allow by construction: an allow prefix that a deny prefix covers
is stored as deny, so the datapath's longest match is always the right answer.

L7: an allow prefix that comes from a port with HTTP rules (`Entry.l7`) is stored as REDIRECT
(the datapath hands the connection to the node's L7 proxy) unless a plain L3/L4 allow of the same
class gives the very same prefix (then every request would pass anyway). The proxy judges the
requests with `MapState.proxy`: the endpoint's allow entries of each direction with L7 rules, as
plain data. An egress prefix from a port with DNS rules (`Entry.dns`) is stored as REDIRECT_DNS (to
the node's DNS proxy), which judges the queries with `MapState.dns`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cilia.identity.reserved import ReservedIdentity
from cilia.policy.errors import PolicyMapOverflow
from cilia.policy.resolve import Decision, DirectionPolicy, EndpointPolicy, Verdict
from cilia.policy.rules import (
    CidrPeer,
    Direction,
    EntityPeer,
    Entry,
    FqdnPeer,
    IdentityView,
    Peer,
    PortRange,
    SelectorPeer,
    ServicePeer,
)

ALLOW, DENY = 1, 2  # policy_entry.verdict (C: VERDICT_ALLOW, VERDICT_DENY; the contract test checks)
REDIRECT = 5  # allow through the L7 proxy (C: VERDICT_REDIRECT)
REDIRECT_DNS = 6  # allow through the DNS proxy (C: VERDICT_REDIRECT_DNS)


@dataclass(frozen=True, order=True)
class PortKey:
    """protocol 0 = every protocol (then port and bits are 0); bits = length of the port prefix."""

    protocol: int
    port: int = 0
    bits: int = 0

    def covers(self, other: PortKey) -> bool:
        if self.protocol == 0:
            return True
        if other.protocol != self.protocol or other.bits < self.bits:
            return False
        shift = 16 - self.bits
        return (other.port >> shift) == (self.port >> shift)

    def matches(self, protocol: int, port: int) -> bool:
        return self.covers(PortKey(protocol, port, 16))

    @property
    def prefix_bits(self) -> int:
        """Bits of (protocol, port) the LPM key fixes."""
        return 0 if self.protocol == 0 else 8 + self.bits


@dataclass(frozen=True)
class PortValue:
    verdict: int  # ALLOW or DENY
    rule_id: int


@dataclass
class DirectionState:
    lookup: bool = False  # False: the datapath lets everything through without a lookup
    enforced: bool = False
    classes: dict[int, int] = field(default_factory=dict)  # identity -> class (only classes != 0)
    ports: dict[tuple[int, PortKey], PortValue] = field(default_factory=dict)  # (class, key) -> value

    def size(self) -> int:
        return len(self.classes) + len(self.ports)


@dataclass(frozen=True)
class ProxyPort:
    protocol: int
    low: int
    high: int
    http: tuple[dict[str, Any], ...] | None  # HttpRule.to_json() each; None = every request passes


@dataclass(frozen=True)
class ProxyEntry:
    """One allow entry as the proxy sees it: which peers (None = every identity) on which ports.

    `policy` is the (kind, namespace, name) of the policy the entry comes from, for the access log;
    the engine fills it in (compute_map_state knows rule ids only)."""

    rule_id: int
    identities: tuple[int, ...] | None
    ports: tuple[ProxyPort, ...]
    policy: tuple[str, str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule_id": self.rule_id,
            "identities": None if self.identities is None else list(self.identities),
            "ports": [{"protocol": p.protocol, "low": p.low, "high": p.high,
                       "http": None if p.http is None else list(p.http)} for p in self.ports]}
        if self.policy is not None:
            out["policy"] = {"kind": self.policy[0], "namespace": self.policy[1], "name": self.policy[2]}
        return out


@dataclass(frozen=True)
class ProxyRules:
    """What the L7 proxy needs of one endpoint: each direction's allow entries, or () for a direction
    with no L7 rule (the proxy does not judge it), and whether the endpoint is in audit mode."""

    ingress: tuple[ProxyEntry, ...] = ()
    egress: tuple[ProxyEntry, ...] = ()
    audit: bool = False

    def __bool__(self) -> bool:
        return bool(self.ingress or self.egress)

    def entries(self) -> tuple[ProxyEntry, ...]:
        return self.ingress + self.egress

    def with_policies(self, policy_of: Callable[[int], tuple[str, str, str] | None]) -> ProxyRules:
        return ProxyRules(tuple(replace(e, policy=policy_of(e.rule_id)) for e in self.ingress),
                          tuple(replace(e, policy=policy_of(e.rule_id)) for e in self.egress), self.audit)

    def to_json(self) -> dict[str, Any]:
        return {"audit": self.audit, "ingress": [e.to_json() for e in self.ingress],
                "egress": [e.to_json() for e in self.egress]}


@dataclass
class MapState:
    ingress: DirectionState
    egress: DirectionState
    audit: bool = False
    allow_host_ingress: bool = False
    proxy: ProxyRules = field(default_factory=ProxyRules)  # what the L7 proxy needs; false when nothing is redirected
    dns: tuple[ProxyEntry, ...] = ()  # egress entries for the DNS proxy (cilia.proxy.dnspolicy); () = no DNS rules

    def direction(self, direction: Direction) -> DirectionState:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def size(self) -> int:
        return self.ingress.size() + self.egress.size()

    def lookup(self, direction: Direction, identity: int, protocol: int, port: int) -> Decision:
        """What the datapath answers (mirrors policy_check() in bpf/lib/policy.h)."""
        state = self.direction(direction)
        if not state.lookup:
            return Decision(Verdict.ALLOWED, 0, enforced=False)
        if direction is Direction.INGRESS and identity == ReservedIdentity.HOST and self.allow_host_ingress:
            return Decision(Verdict.ALLOWED, 0)
        klass = state.classes.get(identity, 0)
        best: tuple[PortKey, PortValue] | None = None
        for (c, key), value in state.ports.items():
            if c == klass and key.matches(protocol, port) and (best is None or key.prefix_bits > best[0].prefix_bits):
                best = (key, value)
        if best is None:
            return Decision(Verdict.DEFAULT_DENIED, 0, enforced=state.enforced, audited=self.audit)
        if best[1].verdict == DENY:
            return Decision(Verdict.DENIED, best[1].rule_id, enforced=state.enforced, audited=self.audit)
        return Decision(Verdict.ALLOWED, best[1].rule_id, enforced=state.enforced,
                        redirect=best[1].verdict in (REDIRECT, REDIRECT_DNS))


# ----- peers -> identities -------------------------------------------------------------------------
class PeerIndex:
    """Which identities each peer matches, computed once per universe and shared by all endpoints.

    Thread-safe: the regeneration workers share one index per revision. Answers are cached as
    they are computed (two threads computing the same one store the same value)."""

    def __init__(self, universe: Sequence[IdentityView]) -> None:
        self.universe = universe
        self._pods = [i for i in universe if i.is_pod]
        self._reserved = [i for i in universe if i.is_reserved]
        self._cidr_by_key: dict[tuple[int, int, int], list[IdentityView]] = {}
        self._cidrs = [i for i in universe if i.is_cidr]
        self._addressed = [i for i in universe if i.address_peers]  # selected by an address peer
        self._cache: dict[object, frozenset[int]] = {}
        self._cidr_peers_done: set[CidrPeer] = set()
        self._cidr_lock = threading.Lock()

    def matches(self, peer: Peer) -> frozenset[int]:
        cached = self._cache.get(peer)
        if cached is not None:
            return cached
        candidates: Iterable[IdentityView]
        if isinstance(peer, SelectorPeer):
            candidates = self._pods + (self._reserved if peer.selector.selects_reserved else [])
        elif isinstance(peer, EntityPeer):
            candidates = self.universe
        elif isinstance(peer, ServicePeer):
            candidates = self._addressed
        elif isinstance(peer, FqdnPeer):
            candidates = [i for i in self.universe if i.is_fqdn]
        else:
            candidates = self._cidr_candidates(peer) + [i for i in self._reserved if i.id == ReservedIdentity.WORLD]
            if peer.selects_pods:
                candidates += [i for i in self._addressed if i.is_pod]
        result = frozenset(i.id for i in candidates if peer.matches(i))
        self._cache[peer] = result
        return result

    def _cidr_candidates(self, peer: CidrPeer) -> list[IdentityView]:
        """CIDR identities inside the peer's network, found by walking each identity's supernets once."""
        if not self._cidr_by_key and self._cidrs:
            with self._cidr_lock:  # built once, completely, before anyone reads it
                if not self._cidr_by_key:
                    by_key: dict[tuple[int, int, int], list[IdentityView]] = {}
                    for identity in self._cidrs:
                        prefix = identity.prefix
                        assert prefix is not None
                        address = int(prefix.network_address)
                        width = prefix.max_prefixlen
                        for bits in range(prefix.prefixlen, -1, -1):
                            mask = ((1 << bits) - 1) << (width - bits) if bits else 0
                            by_key.setdefault((prefix.version, address & mask, bits), []).append(identity)
                    self._cidr_by_key = by_key
        network = peer.network
        return self._cidr_by_key.get((network.version, int(network.network_address), network.prefixlen), [])


# ----- map state -----------------------------------------------------------------------------------
def port_keys(ports: Iterable[PortRange]) -> list[PortKey]:
    keys: list[PortKey] = []
    for p in ports:
        if p.protocol == 0:
            keys.append(PortKey(0))
        elif p.all_ports:
            keys.append(PortKey(p.protocol))
        else:
            keys += [PortKey(p.protocol, value, bits) for value, bits in range_prefixes(p.low, p.high)]
    return keys


def range_prefixes(low: int, high: int, width: int = 16) -> list[tuple[int, int]]:
    """[low, high] as the fewest aligned prefixes (value, prefix length)."""
    out: list[tuple[int, int]] = []
    while low <= high:
        size = low & -low if low else 1 << width
        while size > high - low + 1:
            size >>= 1
        out.append((low, width - size.bit_length() + 1))
        low += size
    return out


def _class_ports(entries: Sequence[Entry], enforced: bool) -> dict[PortKey, PortValue]:
    allows: dict[PortKey, int] = {}
    denies: dict[PortKey, int] = {}
    plain: set[PortKey] = set()  # allowed by an entry without L7 rules on that prefix
    dns_keys: set[PortKey] = set()  # redirected to the DNS proxy (an egress DNS rule's port)
    for entry in sorted(entries, key=lambda e: e.rule_id):
        target = denies if entry.deny else allows
        for key in port_keys(entry.ports):
            target.setdefault(key, entry.rule_id)
        if not entry.deny:
            l7_ports = {p for p, _ in entry.l7} | {p for p, _ in entry.dns}
            plain.update(port_keys(p for p in entry.ports if p not in l7_ports))
            dns_keys.update(port_keys(p for p, _ in entry.dns))
    if not enforced:
        allows.setdefault(PortKey(0), 0)
    result: dict[PortKey, PortValue] = {}
    deny_keys = sorted(denies.items(), key=lambda kv: kv[0].prefix_bits)
    for key in allows.keys() | denies.keys():
        covering = [rule for dkey, rule in deny_keys if dkey.covers(key)]
        if covering:
            result[key] = PortValue(DENY, min(covering))
        elif key in plain or (not enforced and key == PortKey(0)):
            result[key] = PortValue(ALLOW, allows[key])
        else:
            result[key] = PortValue(REDIRECT_DNS if key in dns_keys else REDIRECT, allows[key])
    return result


def proxy_entries(policy: DirectionPolicy, index: PeerIndex) -> tuple[ProxyEntry, ...]:
    """One direction's allow entries for the proxy, or () when no entry has L7 rules."""
    if not any(e.l7 for e in policy.entries if not e.deny):
        return ()
    out: list[ProxyEntry] = []
    for entry in policy.entries:
        if entry.deny:
            continue  # denied connections never reach the proxy (the datapath drops them)
        identities: tuple[int, ...] | None = None
        if not entry.matches_unknown:
            identities = tuple(sorted(set().union(*(index.matches(p) for p in entry.peers))))
        l7 = dict(entry.l7)
        ports = tuple(ProxyPort(p.protocol, p.low, p.high,
                                tuple(r.to_json() for r in l7[p]) if p in l7 else None) for p in entry.ports)
        out.append(ProxyEntry(entry.rule_id, identities, ports))
    return tuple(out)


def dns_entries(policy: DirectionPolicy, index: PeerIndex) -> tuple[ProxyEntry, ...]:
    """The egress allow entries for the DNS proxy (its `http` field holds the entry's DNS matcher
    keys, cilia.fqdn.matchpattern), or () when no entry has DNS rules."""
    if not any(e.dns for e in policy.entries if not e.deny):
        return ()
    out: list[ProxyEntry] = []
    for entry in policy.entries:
        if entry.deny:
            continue
        identities: tuple[int, ...] | None = None
        if not entry.matches_unknown:
            identities = tuple(sorted(set().union(*(index.matches(p) for p in entry.peers))))
        dns = dict(entry.dns)
        ports = tuple(ProxyPort(p.protocol, p.low, p.high,
                                tuple({"dns": m.key} for m in dns[p]) if p in dns else None) for p in entry.ports)
        out.append(ProxyEntry(entry.rule_id, identities, ports))
    return tuple(out)


def compute_direction(policy: DirectionPolicy, index: PeerIndex) -> DirectionState:
    state = DirectionState(lookup=policy.needs_lookup, enforced=policy.enforced)
    if not state.lookup:
        return state
    entries = policy.entries
    wildcard = frozenset(k for k, e in enumerate(entries) if e.matches_unknown)
    member_of: dict[int, set[int]] = {}
    for k, entry in enumerate(entries):
        if k in wildcard:
            continue
        for peer in entry.peers:
            for identity in index.matches(peer):
                member_of.setdefault(identity, set()).add(k)
    sets: dict[int, frozenset[int]] = {i: frozenset(ks) | wildcard for i, ks in member_of.items()}
    distinct = sorted({s for s in sets.values() if s != wildcard}, key=lambda s: tuple(sorted(s)))
    class_of = {s: n + 1 for n, s in enumerate(distinct)}
    state.classes = {i: class_of[s] for i, s in sets.items() if s != wildcard}
    for klass, members in [(0, wildcard), *((c, s) for s, c in class_of.items())]:
        for key, value in _class_ports([entries[k] for k in members], policy.enforced).items():
            state.ports[(klass, key)] = value
    return state


def compute_map_state(policy: EndpointPolicy, index: PeerIndex, *, max_entries: int = 0) -> MapState:
    state = MapState(compute_direction(policy.ingress, index), compute_direction(policy.egress, index),
                     policy.audit, policy.allow_host_ingress,
                     ProxyRules(proxy_entries(policy.ingress, index), proxy_entries(policy.egress, index),
                                policy.audit),
                     dns_entries(policy.egress, index))
    if max_entries and state.size() > max_entries:
        raise PolicyMapOverflow(
            f"policy needs {state.size()} map entries ({len(state.ingress.classes) + len(state.egress.classes)} "
            f"identity, {len(state.ingress.ports) + len(state.egress.ports)} port) but an endpoint may use "
            f"{max_entries} (agent flag --policy-map-max-entries)")
    return state
