"""The normalized rule model every policy kind is parsed into.

A Rule is one policy (or one `specs` entry of a CNP): a subject selector and, per direction,
entries that allow or deny traffic from peers on ports. Peers say which identities they match;
ports say which (protocol, port range) they match. Rule ids are assigned by the repository and
travel through the datapath so a drop can name its policy.

Two kinds of peers select by address rather than by labels: a NetworkPolicy ipBlock (which,
as Kubernetes says, also selects the pods whose IPs it covers) and a Cilium toServices entry
(the service's backends and frontends). Which identities they match is computed from the
addresses the engine knows (cilia.policy.addresses) and carried in each IdentityView's
`address_peers`, so matching stays a pure function of the view.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from cilia import ipproto
from cilia.fqdn.matchpattern import NameMatcher
from cilia.identity.cidr import CIDR_IDENTITY_BASE
from cilia.identity.fqdn import FQDN_IDENTITY_BASE, FQDN_LABEL_SOURCE
from cilia.identity.labels import LabelSet
from cilia.identity.reserved import ReservedIdentity
from cilia.policy.l7 import HttpRule
from cilia.policy.selector import Selector

TCP, UDP, SCTP, ICMP, ICMPV6 = ipproto.TCP, ipproto.UDP, ipproto.SCTP, ipproto.ICMP, ipproto.ICMPV6
# The spellings policy objects use (upper case), from the one protocol table.
PROTOCOL_NUMBERS = {name.upper(): number for number, name in ipproto.NAMES.items()}
L4_PROTOCOLS = ipproto.PORT_PROTOCOLS
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Direction(StrEnum):
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True, order=True)
class PolicyRef:
    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class IdentityView:
    """What policy needs to know of an identity: its number, labels and, for CIDR ones, the prefix."""

    id: int
    labels: LabelSet
    prefix: Network | None = None
    # the address-based peers (pod-selecting CidrPeer, ServicePeer) that select this identity
    address_peers: frozenset[object] = frozenset()

    @property
    def is_reserved(self) -> bool:
        return 0 < self.id < 256

    @property
    def is_pod(self) -> bool:
        return 256 <= self.id < CIDR_IDENTITY_BASE

    @property
    def is_cidr(self) -> bool:
        return self.prefix is not None

    @property
    def is_fqdn(self) -> bool:
        """An FQDN identity (cilia.identity.fqdn): the IPs that names some toFQDNs selectors match resolved to."""
        return self.id >= FQDN_IDENTITY_BASE


# ----- peers -------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class SelectorPeer:
    selector: Selector

    matches_unknown = False

    def matches(self, identity: IdentityView) -> bool:
        if identity.is_pod:
            return self.selector.matches(identity.labels)
        if identity.is_reserved and self.selector.selects_reserved:
            return self.selector.matches(identity.labels)
        return False

    def __str__(self) -> str:
        return f"endpoints {self.selector}"


CLUSTER_RESERVED = frozenset({ReservedIdentity.HOST, ReservedIdentity.REMOTE_NODE, ReservedIdentity.HEALTH,
                              ReservedIdentity.INIT, ReservedIdentity.UNMANAGED, ReservedIdentity.INGRESS,
                              ReservedIdentity.KUBE_APISERVER})
ENTITIES = {
    "host": frozenset({ReservedIdentity.HOST}),
    "remote-node": frozenset({ReservedIdentity.REMOTE_NODE}),
    "health": frozenset({ReservedIdentity.HEALTH}),
    "init": frozenset({ReservedIdentity.INIT}),
    "unmanaged": frozenset({ReservedIdentity.UNMANAGED}),
    "kube-apiserver": frozenset({ReservedIdentity.KUBE_APISERVER}),
    "ingress": frozenset({ReservedIdentity.INGRESS}),
    "world": frozenset({ReservedIdentity.WORLD}),
    "world-ipv4": frozenset({ReservedIdentity.WORLD}),
    "world-ipv6": frozenset({ReservedIdentity.WORLD}),
    "cluster": CLUSTER_RESERVED,
    "all": frozenset(),
}


@dataclass(frozen=True, order=True)
class EntityPeer:
    entity: str

    @property
    def matches_unknown(self) -> bool:
        return self.entity == "all"

    def matches(self, identity: IdentityView) -> bool:
        if self.entity == "all":
            return True
        if self.entity.startswith("world"):
            return identity.id == ReservedIdentity.WORLD or identity.is_cidr or identity.is_fqdn
        if self.entity == "cluster" and identity.is_pod:
            return True
        return identity.id in ENTITIES[self.entity]

    def __str__(self) -> str:
        return f"entity {self.entity}"


@dataclass(frozen=True, order=True)
class CidrPeer:
    """Matches the CIDR identities inside `network` and outside every except, and world for /0.
    `selects_pods` (NetworkPolicy ipBlock): also the pod identities whose known IPs all fall inside
    the block and outside its excepts (as computed into the views' `address_peers`). Cilium's
    CIDR rules leave it off: they never select cluster endpoints (cilium/cilium#9209)."""

    network: Network
    excepts: tuple[Network, ...] = ()
    selects_pods: bool = False

    matches_unknown = False

    def contains(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return (address.version == self.network.version and address in self.network
                and not any(address in e for e in self.excepts if e.version == address.version))

    def matches(self, identity: IdentityView) -> bool:
        if identity.is_pod:
            return self.selects_pods and self in identity.address_peers
        prefix = identity.prefix
        if identity.id == ReservedIdentity.WORLD:
            return self.network.prefixlen == 0  # addresses no CIDR identity covers (excepts have their own)
        if prefix is None or prefix.version != self.network.version or not prefix.subnet_of(self.network):  # type: ignore[arg-type]
            return False
        return not any(prefix.subnet_of(e) for e in self.excepts if e.version == prefix.version)  # type: ignore[arg-type]

    def __str__(self) -> str:
        excepts = f" except {', '.join(map(str, self.excepts))}" if self.excepts else ""
        return f"{'ipBlock' if self.selects_pods else 'cidr'} {self.network}{excepts}"


@dataclass(frozen=True, order=True)
class ServicePeer:
    """Cilium toServices: the current backends (and frontend addresses) of the services named
    (`name`) or selected by their labels (`selector`) in `namespace` ("" = every namespace, a
    CCNP's default). A backend that is a known pod matches through its pod identity, any other
    address through a /32 (/128) CIDR identity; which ones is computed per revision into the
    views' `address_peers`."""

    namespace: str
    name: str = ""
    selector: Selector | None = None

    matches_unknown = False

    def selects_service(self, namespace: str, name: str, labels: LabelSet) -> bool:
        if self.namespace and namespace != self.namespace:
            return False
        if self.selector is None:
            return name == self.name
        return self.selector.matches(labels)

    def matches(self, identity: IdentityView) -> bool:
        return (identity.is_pod or identity.is_cidr) and self in identity.address_peers

    def __str__(self) -> str:
        where = self.namespace or "*"
        return f"service {where}/{self.name}" if self.selector is None else f"services {where} {self.selector}"


@dataclass(frozen=True, order=True)
class FqdnPeer:
    """Cilium toFQDNs: the FQDN identities carrying this selector's label, i.e. the IPs the DNS
    proxy saw in allowed answers for names the selector matches (cilia.identity.fqdn)."""

    matcher: NameMatcher

    matches_unknown = False

    def matches(self, identity: IdentityView) -> bool:
        return identity.is_fqdn and any(label.source == FQDN_LABEL_SOURCE and label.key == self.matcher.key
                                        for label in identity.labels)

    def __str__(self) -> str:
        return f"fqdn {self.matcher}"


Peer = SelectorPeer | EntityPeer | CidrPeer | ServicePeer | FqdnPeer
AddressPeer = CidrPeer | ServicePeer
ALL = EntityPeer("all")


# ----- ports -------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class PortRange:
    """protocol 0 = every protocol (an L3-only rule); low..high inclusive, 0..65535 = every port.
    ICMP types are carried as ports of protocol ICMP / ICMPv6."""

    protocol: int
    low: int = 0
    high: int = 65535

    @property
    def all_ports(self) -> bool:
        return self.low == 0 and self.high == 65535

    def matches(self, protocol: int, port: int) -> bool:
        return (self.protocol in (0, protocol)) and self.low <= port <= self.high

    def __str__(self) -> str:
        if self.protocol == 0:
            return "any"
        name = ipproto.name_of(self.protocol)
        if self.all_ports:
            return f"*/{name}"
        if self.protocol in (ICMP, ICMPV6):
            return f"{name} type {self.low}"
        return f"{self.low}/{name}" if self.low == self.high else f"{self.low}-{self.high}/{name}"


ANY_PORT = (PortRange(0),)


@dataclass(frozen=True)
class NamedPort:
    """A port given by container-port name; resolved per endpoint (ingress) or over pods (egress)."""

    name: str
    protocol: int


# ----- entries and rules -------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One element of ingress / egress / ingressDeny / egressDeny (or of a NetworkPolicy's lists)."""

    peers: tuple[Peer, ...]  # an empty tuple selects nothing (Cilium's `{}` rule)
    ports: tuple[PortRange, ...] = ANY_PORT
    named_ports: tuple[NamedPort, ...] = ()
    deny: bool = False
    index: int = 0  # position in its list, for messages
    rule_id: int = 0  # assigned by the repository
    # ports (also in `ports`) whose connections go through the L7 proxy, with the HTTP rules every
    # request on them must match one of (cilia.policy.l7); empty: plain L3/L4
    l7: tuple[tuple[PortRange, tuple[HttpRule, ...]], ...] = ()
    # egress ports whose DNS queries go through the DNS proxy, with the names it lets through
    # (cilia.fqdn.matchpattern); empty: none
    dns: tuple[tuple[PortRange, tuple[NameMatcher, ...]], ...] = ()

    def matches_identity(self, identity: IdentityView) -> bool:
        return any(peer.matches(identity) for peer in self.peers)

    @property
    def matches_unknown(self) -> bool:
        return any(peer.matches_unknown for peer in self.peers)


@dataclass(frozen=True)
class Rule:
    ref: PolicyRef
    subject: Selector  # already scoped to the namespace for namespaced kinds
    ingress: tuple[Entry, ...] = ()
    egress: tuple[Entry, ...] = ()
    enables_ingress: bool = False  # selecting an endpoint turns default-deny on for this direction
    enables_egress: bool = False
    spec_index: int = 0

    def entries(self, direction: Direction) -> tuple[Entry, ...]:
        return self.ingress if direction is Direction.INGRESS else self.egress

    def enables(self, direction: Direction) -> bool:
        return self.enables_ingress if direction is Direction.INGRESS else self.enables_egress
