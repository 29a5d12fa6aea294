"""Cluster-wide ClusterIPs for Services kept in etcd: what the apiserver does when it fills
`spec.clusterIP`, as part of the write of the Service itself.

Each address a Service holds is reserved at `cilia/clusterips/<ip>` -> `{"service": "ns/name"}`
(no lease). `EtcdStore` asks a `ClusterIpRound` (one per attempt of a transaction) what to add
to the transaction that writes or deletes a Service:

- a Service naming no address (and not headless) keeps the one its stored object holds (as the
  apiserver does on update), else gets the lowest free address of the first service CIDR (`.1` is
  kept for the `kubernetes` service); the object is written with `spec.clusterIP` and
  `spec.clusterIPs` filled, so every node reads the same value;
- a new reservation is a create (compare: the key does not exist), a kept one a compare on its
  mod revision, a released one (the Service deleted, headless now, or another address) a delete
  conditioned the same way: all in the Service's own transaction, so of two Services racing for an
  address one commits and the other (its compare failed) reads again and takes the next one;
- an address another Service holds is refused ("provided IP is already allocated", as the
  apiserver says). A reservation whose Service no longer exists or no longer holds it (written by
  hand, garbage) is taken over, under a compare on its mod revision.

Addresses of stored Services without a reservation (written before this existed) count as taken.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cilia.kvstore.api import Cmp, Delete, KeyValue, KvClient, Put
from cilia.resources.parse import ResourceError
from cilia.resources.validate import describe

log = logging.getLogger(__name__)

PREFIX = "cilia/clusterips/"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
ServiceCidr = ipaddress.IPv4Network | ipaddress.IPv6Network
_SEARCH_LIMIT = 1 << 20  # addresses looked at in one range (a /12 has a million)


def ip_key(ip: IPAddress) -> str:
    return f"{PREFIX}{ip}"


def encode_owner(service: str) -> bytes:
    return json.dumps({"service": service}, separators=(",", ":")).encode()


def decode_owner(value: bytes) -> str | None:
    """The "namespace/name" a reservation names; None when the value is not one (garbage)."""
    try:
        doc = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    service = doc.get("service") if isinstance(doc, dict) else None
    return service if isinstance(service, str) and service.count("/") == 1 else None


def decode_key(key: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(key.removeprefix(PREFIX))
    except ValueError:
        return None
    return ip if key.startswith(PREFIX) and ip_key(ip) == key else None


def service_name(obj: dict[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace') or 'default'}/{metadata.get('name')}"


def requested_ips(obj: dict[str, Any]) -> list[IPAddress] | None:
    """The addresses a (validated) Service names: None for a headless one, [] for none."""
    spec = obj.get("spec") or {}
    multi = spec.get("clusterIPs") or []
    single = spec.get("clusterIP")
    if single == "None" or "None" in multi:
        return None
    if multi:
        return [ipaddress.ip_address(raw) for raw in multi]
    return [ipaddress.ip_address(single)] if single else []


def first_free(cidr: ServiceCidr, taken: Iterable[IPAddress]) -> IPAddress | None:
    """The lowest host address of `cidr` not taken, skipping the first (the `kubernetes` service's)."""
    used = set(taken)
    start = int(cidr.network_address) + 2
    last = int(cidr.broadcast_address) - (1 if cidr.version == 4 and cidr.prefixlen < 31 else 0)
    for value in range(start, min(last, start + _SEARCH_LIMIT) + 1):
        ip = ipaddress.ip_address(value)
        if ip not in used:
            return ip
    return None


@dataclass
class Reservation:
    owner: str | None  # None: a value that names no Service
    mod_revision: int


@dataclass
class ClusterIpRound:
    """The reservations as read for one attempt of one transaction, and what that attempt adds."""

    cidrs: Sequence[ServiceCidr]
    reservations: dict[IPAddress, Reservation]
    unreserved: set[IPAddress]  # held by stored Services without a reservation key
    owner_holds: Callable[[str, IPAddress], bool]  # does that Service (as stored now) hold that address?
    compares: list[Cmp] = field(default_factory=list)
    ops: list[Put | Delete] = field(default_factory=list)

    def admit(self, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        """Fill a Service's addresses (in place) and add their reservations and releases."""
        me = service_name(obj)
        held = (requested_ips(old) or []) if old is not None else []
        wanted = requested_ips(obj)
        if wanted == []:
            wanted = held or self._allocate(obj)
            spec = obj.setdefault("spec", {})
            spec["clusterIP"] = str(wanted[0])
            spec["clusterIPs"] = [str(ip) for ip in wanted]
        for ip in wanted or []:
            self._reserve(obj, me, ip)
        for ip in held:
            if ip not in (wanted or []):
                self._release(me, ip)

    def release_all(self, old: dict[str, Any]) -> None:
        me = service_name(old)
        for ip in requested_ips(old) or []:
            self._release(me, ip)

    def _allocate(self, obj: dict[str, Any]) -> list[IPAddress]:
        # single stack, the first range configured: as the per-node allocator of the local store
        for cidr in self.cidrs[:1]:
            ip = first_free(cidr, self.reservations.keys() | self.unreserved)
            if ip is not None:
                return [ip]
            raise ResourceError(f"{describe(obj)}: field 'spec.clusterIP': failed to allocate a serviceIP: "
                                f"range {cidr} is full ({len(self.reservations)} addresses reserved)")
        raise ResourceError(f"{describe(obj)}: field 'spec.clusterIP': no service CIDR is configured to "
                            "allocate from (--service-cidr)")

    def _reserve(self, obj: dict[str, Any], me: str, ip: IPAddress) -> None:
        key = ip_key(ip)
        found = self.reservations.get(ip)
        if found is not None and found.mod_revision < 0:  # reserved by this very transaction
            if found.owner == me:
                return
            raise ResourceError(f"{describe(obj)}: field 'spec.clusterIPs': failed to allocate IP {ip}: "
                                f"provided IP is already allocated (to Service {found.owner})")
        if found is None:
            self.compares.append(Cmp(key, 0))
        elif found.owner != me:
            if found.owner is not None and self.owner_holds(found.owner, ip):
                raise ResourceError(f"{describe(obj)}: field 'spec.clusterIPs': failed to allocate IP {ip}: "
                                    f"provided IP is already allocated (to Service {found.owner})")
            log.warning("clusterips: %s names %s, which does not hold it; taken over by %s", key,
                        found.owner or "no Service", me)
            self.compares.append(Cmp(key, found.mod_revision))
        else:
            self.compares.append(Cmp(key, found.mod_revision))  # still ours when this commits
            self.reservations[ip] = Reservation(me, found.mod_revision)
            return
        self.ops.append(Put(key, encode_owner(me)))
        self.reservations[ip] = Reservation(me, -1)  # taken by this transaction (no compare again)

    def _release(self, me: str, ip: IPAddress) -> None:
        found = self.reservations.get(ip)
        if found is None or found.owner != me:
            return  # not ours (a hand-written or older object): nothing to release
        if found.mod_revision >= 0:
            self.compares.append(Cmp(ip_key(ip), found.mod_revision))
        self.ops.append(Delete(ip_key(ip)))
        # kept in the view: another Service of this transaction cannot take it (one txn may not
        # both delete and put a key), and it is refused as held until this one is stored


def read_reservations(kv: KvClient) -> dict[IPAddress, Reservation]:
    """Every reservation in the store (KvError when unreachable); a bad key is logged and skipped."""
    rows: list[KeyValue]
    rows, _revision = kv.list_prefix(PREFIX)
    found: dict[IPAddress, Reservation] = {}
    for row in rows:
        ip = decode_key(row.key)
        if ip is None:
            log.warning("clusterips: %s is no %s<ip> key; skipped", row.key, PREFIX)
            continue
        owner = decode_owner(row.value)
        if owner is None:
            log.warning("clusterips: %s: value is not {\"service\": \"<namespace>/<name>\"}; counts as taken",
                        row.key)
        found[ip] = Reservation(owner, row.mod_revision)
    return found
