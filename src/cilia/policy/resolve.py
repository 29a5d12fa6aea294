"""Which rules apply to an endpoint, and the verdict for one (peer identity, protocol, port).

`decide` is the reference semantics: the map state (mapstate.py) is a compressed form of it that
the datapath can look up in O(1), and a unit test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from cilia.identity.labels import LabelSet
from cilia.identity.reserved import ReservedIdentity
from cilia.policy.rules import Direction, Entry, IdentityView, PolicyRef, PortRange, Rule


class Enforcement(StrEnum):
    DEFAULT = "default"  # a direction is enforced once a policy selects the endpoint for it
    ALWAYS = "always"  # every endpoint is enforced both ways, policy or not
    NEVER = "never"  # nothing is enforced, not even deny rules


class Verdict(StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"  # an explicit deny rule
    DEFAULT_DENIED = "default-denied"  # enforced and no rule allowed it


NamedPorts = Mapping[str, Iterable[tuple[int, int]]]  # name -> {(protocol, port)}


@dataclass(frozen=True)
class DirectionPolicy:
    direction: Direction
    enforced: bool
    entries: tuple[Entry, ...] = ()
    selected_by: tuple[PolicyRef, ...] = ()

    @property
    def needs_lookup(self) -> bool:
        """Not enforced and no deny rule: everything passes without looking anything up."""
        return self.enforced or any(e.deny for e in self.entries)


@dataclass(frozen=True)
class EndpointPolicy:
    ingress: DirectionPolicy
    egress: DirectionPolicy
    audit: bool = False
    allow_host_ingress: bool = False

    def direction(self, direction: Direction) -> DirectionPolicy:
        return self.ingress if direction is Direction.INGRESS else self.egress


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    rule_id: int  # the entry that decided; 0 = default deny, or allowed without enforcement
    matched: tuple[int, ...] = field(default=())  # every entry that matched (allow and deny)
    enforced: bool = True
    audited: bool = False  # denied, but audit mode let it through
    redirect: bool = False  # allowed at L4, each request judged by the L7 proxy

    @property
    def passes(self) -> bool:
        return self.verdict is Verdict.ALLOWED or self.audited


def resolve_endpoint(
    rules: Iterable[Rule],
    labels: LabelSet,
    *,
    enforcement: Enforcement = Enforcement.DEFAULT,
    own_named_ports: NamedPorts | None = None,
    cluster_named_ports: NamedPorts | None = None,
    audit: bool = False,
    allow_host_ingress: bool = False,
) -> EndpointPolicy:
    """The policy of an endpoint with these identity labels. Named ports resolve against the
    endpoint's own pod on ingress and against every pod's on egress (the union, as Cilium does)."""
    selecting = [rule for rule in rules if rule.subject.matches(labels)]
    directions = []
    for direction in Direction:
        named = own_named_ports if direction is Direction.INGRESS else cluster_named_ports
        if enforcement is Enforcement.NEVER:
            directions.append(DirectionPolicy(direction, False))
            continue
        entries = tuple(_resolve_named(entry, named or {}) for rule in selecting for entry in rule.entries(direction))
        enabled = [rule.ref for rule in selecting if rule.enables(direction)]
        enforced = enforcement is Enforcement.ALWAYS or bool(enabled)
        directions.append(DirectionPolicy(direction, enforced, entries, tuple(dict.fromkeys(enabled))))
    host = allow_host_ingress and enforcement is not Enforcement.ALWAYS
    return EndpointPolicy(directions[0], directions[1], audit, host)


def _resolve_named(entry: Entry, named: NamedPorts) -> Entry:
    if not entry.named_ports:
        return entry
    extra = [PortRange(protocol, port, port) for np in entry.named_ports
             for protocol, port in named.get(np.name, ()) if protocol == np.protocol]
    return replace(entry, ports=tuple(sorted(set(entry.ports) | set(extra))), named_ports=())


def decide(policy: DirectionPolicy, identity: IdentityView, protocol: int, port: int, *, audit: bool = False,
           allow_host: bool = False) -> Decision:
    """The verdict for traffic with `identity` as the peer. Deny rules win over allow rules."""
    matched = [e for e in policy.entries
               if e.matches_identity(identity) and any(p.matches(protocol, port) for p in e.ports)]
    ids = tuple(e.rule_id for e in matched)
    denies = sorted(e.rule_id for e in matched if e.deny)
    if denies:
        return Decision(Verdict.DENIED, denies[0], ids, policy.enforced, audited=audit)
    if not policy.enforced:
        return Decision(Verdict.ALLOWED, 0, ids, False)
    if allow_host and identity.id == ReservedIdentity.HOST and policy.direction is Direction.INGRESS:
        return Decision(Verdict.ALLOWED, 0, ids, True)
    allows = sorted(e.rule_id for e in matched)
    if allows:
        return Decision(Verdict.ALLOWED, allows[0], ids, True)
    return Decision(Verdict.DEFAULT_DENIED, 0, ids, True, audited=audit)
