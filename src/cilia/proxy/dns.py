"""The DNS proxy in cilia-proxy: judges pods' DNS queries, forwards allowed ones, and turns the
answers into FQDN identities in the ipcache before the pod sees them.

Transport (bpf/lib/proxy.h, proxy_redirect_dns): a pod's query that an egress DNS rule covers is
assigned to this proxy's IP_TRANSPARENT sockets on DNS_PROXY_PORT (UDP and TCP). The original
destination (the resolver the pod asked) comes from IP_RECVORIGDSTADDR (UDP) or the accepted
socket's own address (TCP); the answer is sent from that address, so the pod sees its resolver
answer. The proxy itself is the resolver's client: it queries the original destination from the
node's own address (no transparent trick on that leg).

Per query (`DnsCore.handle`): parse (dnspython; a packet that does not parse gets FORMERR when its
header is readable, else is dropped), find the client endpoint (pinned endpoints map) and the
server's identity (ipcache), judge it with the endpoint's DNS rules (cilia.proxy.dnspolicy). A
refused name gets REFUSED (or NXDOMAIN: `--tofqdns-dns-reject-response-code nameError`) and never
leaves the node. An allowed answer's A/AAAA addresses go into the name cache (cilia.fqdn.cache,
TTL raised to `--tofqdns-min-ttl`, at most `--tofqdns-max-ips-per-hostname` per name), and each
address whose names match toFQDNs selectors gets that selector set's identity written into the
ipcache (flag FQDN) - then the answer goes to the pod, so its first connection is already allowed.

Identities (cilia.identity.fqdn): the agent's file gives each selector's identity and those of
the selector sets one name can match together (allocated when policy is applied); an address
matched by a set the file lacks (names of different selectors sharing it) needs that set's
identity, asked of the agent (POST /v1/fqdn/identity) off the event loop while the answer waits.
With the agent down the proxy keeps serving, and an address needing a set it does not know gets
the identity of one of its selectors only (fail closed for the others), logged.

GC (`DnsCore.gc`, every second): an expired address leaves the cache and the ipcache unless a
connection to it is still open (the BPF conntrack maps), in which case it is kept until that
connection is gone. Every DNS query and answer is handed to the agent as an access record.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype

from cilia import ipproto
from cilia.fqdn.cache import NameCache
from cilia.fqdn.matchpattern import NameMatcher, fqdn
from cilia.identity import fqdn as fqdn_ids
from cilia.proxy.accesslog import AccessRecord, DnsRecord
from cilia.proxy.dnspolicy import DnsPolicy

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DNS_PROXY_PORT = 15053  # C: DNS_PROXY_PORT (bpf/lib/proxy.h)
MAX_MESSAGE = 65535
REJECT_CODES = {"refused": dns.rcode.REFUSED, "nameError": dns.rcode.NXDOMAIN}
log = logging.getLogger("cilia.proxy.dns")
Protocol4 = Literal["UDP", "TCP"]
Upstream = Callable[[bytes, tuple[str, int], Protocol4], Awaitable[bytes]]


class NodeMaps(Protocol):
    """What the DNS proxy needs of the node's pinned maps (a fake in unit tests)."""

    def endpoint(self, address: IPAddress) -> tuple[int, int] | None:
        """(endpoint id, identity) of a local endpoint's address."""

    def identity_of(self, address: IPAddress) -> int: ...

    def fqdn_entry(self, address: IPAddress) -> int | None:
        """The identity of the address's own ipcache entry when the DNS proxy wrote it; None when
        there is none; -1 when someone else owns the exact entry (a pod, a node, a CIDR)."""

    def put_fqdn(self, address: IPAddress, identity: int) -> None: ...

    def delete_fqdn(self, address: IPAddress) -> None: ...

    def open_connection_ips(self) -> set[IPAddress]: ...


class AccessLog(Protocol):
    def send(self, record: AccessRecord) -> None: ...


@dataclass(frozen=True)
class DnsSettings:
    reject_rcode: int = dns.rcode.REFUSED
    min_ttl: int = 0
    max_ips: int = 50
    upstream_timeout: float = 2.0


class Identities:
    """The agent's FQDN identity file (re-read when it changes) and set requests to the agent.

    The agent allocates, when policy is applied, the identities of every selector and of every set
    of selectors one name can match together, so most answers find theirs in the file. A set the
    file lacks is asked of the agent off the event loop (`prepare`; concurrent answers needing the
    same set share one request, other queries are not held up); a failed request is not repeated
    for RETRY_AFTER seconds (answers meanwhile get the fail-closed identity, see identity_of)."""

    RETRY_AFTER = 5.0

    def __init__(self, path: Path, request: Callable[[frozenset[str]], int | None] | None = None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._request = request
        self._clock = clock
        self._stamp: tuple[int, int] | None = None
        self.sets: dict[frozenset[str], int] = {}
        self.matchers: list[NameMatcher] = []
        self._pending: dict[frozenset[str], asyncio.Future[int | None]] = {}
        self._failed: dict[frozenset[str], float] = {}  # set -> when it may be asked again
        self.requests = 0  # sets asked of the agent (bench, tests)
        self.selectors_changed = False  # the last refresh changed the selectors, not only set numbers

    def refresh(self) -> bool:
        """Re-read the file if it changed. True when it did."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            sets = fqdn_ids.read_sets(self.path) if stamp else {}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("FQDN identities %s unreadable, keeping the previous ones: %s", self.path, exc)
            return False
        self.sets = sets
        matchers = sorted(NameMatcher.from_key(next(iter(k))) for k in self.sets if len(k) == 1)
        self.selectors_changed = matchers != self.matchers
        self.matchers = matchers
        return True

    def selectors_of(self, names: list[str]) -> frozenset[str]:
        return frozenset(m.key for m in self.matchers if any(m.matches(n) for n in names))

    def missing(self, selectors: frozenset[str]) -> bool:
        """A set the agent must be asked for (several selectors, not in the file, not failing)."""
        if len(selectors) < 2 or selectors in self.sets or self._request is None:
            return False
        retry = self._failed.get(selectors)
        return retry is None or retry <= self._clock()

    async def prepare(self, wanted: Iterable[frozenset[str]]) -> None:
        """Ask the agent for the sets in `wanted` it has not allocated yet, all at once."""
        asks = [self._ask(s) for s in set(wanted) if self.missing(s)]
        if asks:
            await asyncio.gather(*asks)

    async def _ask(self, selectors: frozenset[str]) -> int | None:
        pending = self._pending.get(selectors)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._pending[selectors] = pending
            try:
                number = await self._request_in_thread(selectors)
            finally:
                del self._pending[selectors]
            pending.set_result(number)
            return number
        return await asyncio.shield(pending)

    async def _request_in_thread(self, selectors: frozenset[str]) -> int | None:
        assert self._request is not None
        self.requests += 1
        try:
            number = await asyncio.to_thread(self._request, selectors)
        except Exception as exc:  # the agent is down or slow: fail closed (identity_of)
            log.warning("FQDN identity for %s not available from the agent: %s", sorted(selectors), exc)
            number = None
        if number is None:
            self._failed[selectors] = self._clock() + self.RETRY_AFTER
        else:
            self._failed.pop(selectors, None)
            self.sets[selectors] = number
        return number

    def identity_of(self, selectors: frozenset[str]) -> int | None:
        if not selectors:
            return None
        number = self.sets.get(selectors)
        if number is not None:
            return number
        # fail closed: only the first selector's identity (the others' rules do not allow it)
        first = sorted(selectors)[0]
        log.warning("no FQDN identity for selector set %s: using %s only", sorted(selectors), first)
        return self.sets.get(frozenset({first}))


@dataclass
class Stats:
    queries: int = 0
    allowed: int = 0
    refused: int = 0
    formerr: int = 0
    dropped: int = 0
    upstream_errors: int = 0
    internal_errors: int = 0  # a bug: an exception the packet handling did not expect


def _header_id(data: bytes) -> int | None:
    return struct.unpack("!H", data[:2])[0] if len(data) >= 12 else None


def _error_reply(query_id: int, question: dns.message.Message | None, rcode: int) -> bytes:
    if question is not None:
        reply = dns.message.make_response(question)
    else:
        reply = dns.message.Message(id=query_id)
        reply.flags = dns.flags.QR
    reply.set_rcode(dns.rcode.Rcode(rcode))
    return reply.to_wire()


class DnsCore:
    """The transport-free part: one query in, the bytes to answer with (or None: drop) out."""

    def __init__(self, maps: NodeMaps, policies: Callable[[int], DnsPolicy], identities: Identities,
                 cache: NameCache, settings: DnsSettings, accesslog: AccessLog | None, upstream: Upstream,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.maps = maps
        self.policies = policies
        self.identities = identities
        self.cache = cache
        self.settings = settings
        self.accesslog = accesslog
        self.upstream = upstream
        self.clock = clock
        self.stats = Stats()
        self.dirty = False  # the cache changed since it was last saved
        self.ipcache_delays: list[float] = []  # answer received -> ipcache written, seconds (bench)
        self._ip_selectors: dict[IPAddress, frozenset[str]] = {}  # what each address's entry was made from

    async def handle(self, data: bytes, client: tuple[str, int], server: tuple[str, int], protocol: Protocol4,
                     ) -> bytes | None:
        self.stats.queries += 1
        try:
            return await self._handle(data, client, server, protocol)
        except Exception:  # never let one packet take the proxy down
            log.exception("DNS query from %s to %s: internal error", client, server)
            self.stats.internal_errors += 1
            return None

    async def _handle(self, data: bytes, client: tuple[str, int], server: tuple[str, int], protocol: Protocol4,
                      ) -> bytes | None:
        query_id = _header_id(data)
        if query_id is None:
            self.stats.dropped += 1
            return None
        try:
            query = dns.message.from_wire(data)
        except (dns.exception.DNSException, ValueError, IndexError, UnicodeError):
            self.stats.formerr += 1
            return _error_reply(query_id, None, dns.rcode.FORMERR)
        if query.flags & dns.flags.QR:
            self.stats.dropped += 1  # an answer sent to the resolver: nothing to reply to
            return None
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            self.stats.formerr += 1
            return _error_reply(query_id, query, dns.rcode.FORMERR if len(query.question) != 1
                                else dns.rcode.NOTIMP)
        question = query.question[0]
        name = fqdn(question.name.to_text())
        qtype = dns.rdatatype.to_text(question.rdtype)
        client_ip, server_ip = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
        local = self.maps.endpoint(client_ip)
        if local is None:
            self.stats.dropped += 1
            log.warning("DNS query from %s: not a local endpoint, dropped", client[0])
            return None
        endpoint_id, identity = local
        server_identity = self.maps.identity_of(server_ip)
        proto_number = ipproto.TCP if protocol == "TCP" else ipproto.UDP
        verdict = self.policies(endpoint_id).judge(server_identity, proto_number, server[1], name)
        started = time.monotonic_ns()
        base = dict(source_ip=client[0], source_port=client[1], destination_ip=server[0],
                    destination_port=server[1], protocol=protocol, source_identity=identity,
                    destination_identity=server_identity, endpoint_id=endpoint_id, ingress=False)
        self._log(AccessRecord(time_ns=time.time_ns(), type="REQUEST",
                               verdict="FORWARDED" if verdict.allowed else "DROPPED",
                               dns=DnsRecord(query=name, qtypes=[qtype]), **base))  # type: ignore[arg-type]
        if not verdict.allowed:
            self.stats.refused += 1
            reply = _error_reply(query_id, query, self.settings.reject_rcode)
            self._log(AccessRecord(time_ns=time.time_ns(), type="RESPONSE", verdict="DROPPED",
                                   latency_ns=time.monotonic_ns() - started,
                                   dns=DnsRecord(query=name, qtypes=[qtype], rcode=self.settings.reject_rcode),
                                   summary="DNS query refused by policy", **base))  # type: ignore[arg-type]
            return reply
        try:
            answer_wire = await asyncio.wait_for(self.upstream(data, server, protocol), self.settings.upstream_timeout)
            answer = dns.message.from_wire(answer_wire)
        except (OSError, TimeoutError, dns.exception.DNSException, ValueError) as exc:
            self.stats.upstream_errors += 1
            log.warning("DNS %s %s from %s: upstream %s failed: %s", qtype, name, client[0], server, exc)
            return _error_reply(query_id, query, dns.rcode.SERVFAIL)
        received = time.monotonic()
        ips, cnames, ttl, rrtypes = _answer_facts(answer)
        if answer.rcode() == dns.rcode.NOERROR and ips:
            await self._learn([name, *cnames], ips, ttl, endpoint_id)
            self.ipcache_delays.append(time.monotonic() - received)
        self.stats.allowed += 1
        self._log(AccessRecord(time_ns=time.time_ns(), type="RESPONSE", verdict="FORWARDED",
                               latency_ns=time.monotonic_ns() - started,
                               dns=DnsRecord(query=name, qtypes=[qtype], rcode=answer.rcode(),
                                             ips=[str(i) for i in ips], ttl=ttl, cnames=cnames, rrtypes=rrtypes),
                               **base))  # type: ignore[arg-type]
        return answer_wire

    async def _learn(self, names: list[str], ips: list[IPAddress], ttl: int, endpoint_id: int) -> None:
        now = self.clock()
        evicted: set[IPAddress] = set()
        for n in names:
            _new, gone = self.cache.update(n, ips, ttl, now, endpoint_id)
            evicted |= gone
        self.dirty = True
        if self.identities.refresh():
            self._identities_changed()
        # the addresses' selector sets only grow by this answer's names (recomputed in full when
        # an address loses a name or the selectors change: gc)
        here = self.identities.selectors_of(names)
        wanted: dict[IPAddress, frozenset[str]] = {}
        for ip in ips:
            known = self._ip_selectors.get(ip)
            if known is None:
                wanted[ip] = self.identities.selectors_of(self.cache.names_of(ip))
            elif not here <= known:
                wanted[ip] = known | here
        if any(self.identities.missing(s) for s in wanted.values()):
            await self.identities.prepare(wanted.values())  # rare: a set no single name explains
            wanted = {ip: s for ip, s in wanted.items() if self.cache.names_of(ip)}  # not cleaned meanwhile
        for ip, selectors in wanted.items():
            self._sync_ip(ip, selectors)
        for ip in evicted:
            self._ip_selectors.pop(ip, None)
            self._release(ip)

    def _sync_ip(self, ip: IPAddress, selectors: frozenset[str] | None = None) -> None:
        """The ipcache entry of one cached address, from the selectors its names match now."""
        if selectors is None:
            selectors = self.identities.selectors_of(self.cache.names_of(ip))
        self._ip_selectors[ip] = selectors
        number = self.identities.identity_of(selectors)
        current = self.maps.fqdn_entry(ip)
        if current == -1:
            return  # a pod's, the node's or a CIDR identity's own entry: never overwritten
        if number is None:
            if current is not None:
                self.maps.delete_fqdn(ip)
        elif current != number:
            self.maps.put_fqdn(ip, number)

    def _release(self, ip: IPAddress) -> None:
        self._ip_selectors.pop(ip, None)
        if self.maps.fqdn_entry(ip) not in (None, -1):
            self.maps.delete_fqdn(ip)

    def gc(self) -> int:
        """Expire addresses (unless a connection to them is open); re-sync when the selectors changed.
        Returns how many addresses left the cache."""
        removed = 0
        expired = self.cache.expired(self.clock())
        if expired:
            busy = self.maps.open_connection_ips()
            for name, ip in expired:
                if ip in busy:
                    continue  # kept while the connection lives (checked again next round)
                removed += 1
                self.dirty = True
                if self.cache.remove(name, ip):
                    self._release(ip)
                else:
                    self._sync_ip(ip)  # still held by another name: perhaps fewer selectors now
        if self.identities.refresh():
            self._identities_changed()
        return removed

    def _identities_changed(self) -> None:
        """The agent's file changed. New selectors (a policy change): every address's selector set is
        matched again (names x selectors). Only new set numbers (a set allocated on demand): the sets
        known stay right, only their identities are looked up again - cheap with many names per address."""
        if self.identities.selectors_changed:
            self._ip_selectors.clear()
            for ip in self.cache.ips():
                self._sync_ip(ip)
        else:
            for ip, selectors in list(self._ip_selectors.items()):
                self._sync_ip(ip, selectors)

    def clean(self) -> int:
        """`cilia fqdn cache clean`: forget every name and remove the FQDN ipcache entries."""
        ips = self.cache.clear()
        for ip in ips:
            self._release(ip)
        self.dirty = True
        return len(ips)

    def _log(self, record: AccessRecord) -> None:
        if self.accesslog is not None:
            self.accesslog.send(record)


def _answer_facts(answer: dns.message.Message) -> tuple[list[IPAddress], list[str], int, list[str]]:
    """The A/AAAA addresses (following the CNAME chain as the answer section gives it), the CNAME
    targets, the smallest TTL among them, and the record types seen."""
    ips: list[IPAddress] = []
    cnames: list[str] = []
    ttls: list[int] = []
    rrtypes: list[str] = []
    for rrset in answer.answer:
        kind = dns.rdatatype.to_text(rrset.rdtype)
        if kind not in rrtypes:
            rrtypes.append(kind)
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            ttls.append(rrset.ttl)
            for rd in rrset:
                ip = ipaddress.ip_address(rd.address)
                if ip not in ips:
                    ips.append(ip)
        elif rrset.rdtype == dns.rdatatype.CNAME:
            ttls.append(rrset.ttl)
            for rd in rrset:
                target = fqdn(rd.target.to_text())
                if target not in cnames:
                    cnames.append(target)
    return ips, cnames, min(ttls) if ttls else 0, rrtypes
