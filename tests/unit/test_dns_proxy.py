"""The DNS proxy's decisions (cilia.proxy.dns.DnsCore) with fake maps and a fake resolver:
allowed / refused names, the ipcache written before the answer, selector-set identities (from
the agent or fail closed), TTL expiry kept alive by open connections, malformed packets."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from cilia.fqdn.cache import NameCache
from cilia.identity.fqdn import FqdnIdentities
from cilia.proxy.accesslog import AccessRecord
from cilia.proxy.dns import DnsCore, DnsSettings, Identities, IPAddress
from cilia.proxy.dnspolicy import DnsPolicy

CLIENT = ("10.200.1.5", 40000)
SERVER = ("198.51.100.53", 53)
SERVER_ID = 16777300
ZONE = {"api.example.test.": ["198.51.100.10", "198.51.100.11"], "img.cdn.example.test.": ["198.51.100.12"],
        "other.example.test.": ["198.51.100.13"], "shared.example.test.": ["198.51.100.12"]}
SELECTORS = ["matchName:api.example.test.", "matchPattern:*.cdn.example.test.", "matchPattern:api.*.test.",
             "matchName:shared.example.test."]


class FakeMaps:
    def __init__(self) -> None:
        self.ipcache: dict[IPAddress, int] = {}
        self.owned: set[IPAddress] = set()  # exact entries someone else owns
        self.open: set[IPAddress] = set()
        self.log: list[str] = []

    def endpoint(self, address: IPAddress) -> tuple[int, int] | None:
        return (7, 1000) if str(address) == CLIENT[0] else None

    def identity_of(self, address: IPAddress) -> int:
        return SERVER_ID if str(address) == SERVER[0] else 2

    def fqdn_entry(self, address: IPAddress) -> int | None:
        return -1 if address in self.owned else self.ipcache.get(address)

    def put_fqdn(self, address: IPAddress, identity: int) -> None:
        self.log.append(f"put {address}")
        self.ipcache[address] = identity

    def delete_fqdn(self, address: IPAddress) -> None:
        self.ipcache.pop(address, None)

    def open_connection_ips(self) -> set[IPAddress]:
        return set(self.open)


class Log:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def send(self, record: AccessRecord) -> None:
        self.records.append(record)


def policy(names: list[str] | None) -> DnsPolicy:
    return DnsPolicy.from_json({"version": 1, "entries": [
        {"rule_id": 3, "identities": [SERVER_ID], "ports": [{"protocol": 17, "low": 53, "high": 53, "dns": names},
                                                            {"protocol": 6, "low": 53, "high": 53, "dns": names}]}]})


class Setup:
    def __init__(self, tmp_path: Path, *, agent: bool = True, reject: int = dns.rcode.REFUSED, min_ttl: int = 0,
                 ttl: int = 30) -> None:
        self.maps = FakeMaps()
        self.now = 1000.0
        self.ttl = ttl
        self.agent = FqdnIdentities(tmp_path / "fqdn-identities.json")
        self.agent.sync(SELECTORS)
        self.requests: list[frozenset[str]] = []

        def request(selectors: frozenset[str]) -> int | None:
            self.requests.append(selectors)
            if not agent:
                raise OSError("agent socket does not exist")
            return self.agent.request(selectors)

        self.log = Log()
        self.identities = Identities(tmp_path / "fqdn-identities.json", request)
        self.upstream_calls = 0
        self.core = DnsCore(self.maps, lambda _ep: policy(["matchPattern:*.example.test.",
                                                           "matchPattern:**.cdn.example.test."]),
                            self.identities, NameCache(min_ttl=min_ttl), DnsSettings(reject_rcode=reject),
                            self.log, self.upstream, clock=lambda: self.now)

    async def upstream(self, data: bytes, server: tuple[str, int], protocol: str) -> bytes:
        self.upstream_calls += 1
        query = dns.message.from_wire(data)
        # the ipcache must not be written before the answer exists, and must be before it is returned
        reply = dns.message.make_response(query)
        name = query.question[0].name.to_text().lower()
        if name in ZONE:
            reply.answer.append(dns.rrset.from_text_list(name, self.ttl, "IN", "A", ZONE[name]))
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply.to_wire()

    def ask(self, name: str, rdtype: str = "A", protocol: str = "UDP", client: tuple[str, int] = CLIENT) -> Any:
        wire = dns.message.make_query(name, rdtype).to_wire()
        out = asyncio.run(self.core.handle(wire, client, SERVER, protocol))  # type: ignore[arg-type]
        return None if out is None else dns.message.from_wire(out)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def test_allowed_answer_writes_the_ipcache_before_it_is_returned(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    answer = s.ask("img.cdn.example.test")
    assert answer.rcode() == dns.rcode.NOERROR
    assert s.maps.ipcache == {ip("198.51.100.12"): s.agent.current()[frozenset({SELECTORS[1]})]}
    kinds = [(r.type, r.verdict, r.dns.query if r.dns else None) for r in s.log.records]
    name = "img.cdn.example.test."
    assert kinds == [("REQUEST", "FORWARDED", name), ("RESPONSE", "FORWARDED", name)]
    assert s.log.records[1].dns is not None and s.log.records[1].dns.ips == ["198.51.100.12"]
    assert s.log.records[1].dns.ttl == 30 and s.log.records[1].endpoint_id == 7


def test_refused_names_never_reach_the_resolver(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    for name in ("x.y.example.test", "example.test", "api.example.org"):
        answer = s.ask(name)
        assert answer.rcode() == dns.rcode.REFUSED and answer.flags & dns.flags.QR
    assert s.upstream_calls == 0 and s.maps.ipcache == {}
    assert {r.verdict for r in s.log.records} == {"DROPPED"}


def test_name_error_is_the_configurable_reject_code(tmp_path: Path) -> None:
    s = Setup(tmp_path, reject=dns.rcode.NXDOMAIN)
    assert s.ask("x.y.example.test").rcode() == dns.rcode.NXDOMAIN


def test_allowed_name_without_selectors_is_cached_not_in_ipcache(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    assert s.ask("other.example.test").rcode() == dns.rcode.NOERROR
    assert s.maps.ipcache == {} and s.core.cache.names_of(ip("198.51.100.13")) == ["other.example.test."]


def test_selectors_one_name_matches_together_have_their_set_identity_ahead(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    both = frozenset({SELECTORS[0], SELECTORS[2]})
    number = s.agent.current()[both]  # allocated with the policy, before any answer
    s.ask("api.example.test")
    assert s.requests == []
    assert s.maps.ipcache == {ip("198.51.100.10"): number, ip("198.51.100.11"): number}


def test_a_set_no_name_explains_is_asked_of_the_agent_once(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.ask("img.cdn.example.test")
    s.ask("shared.example.test")  # the same address: now matched by two selectors' names
    both = frozenset({SELECTORS[1], SELECTORS[3]})
    assert s.requests == [both]
    assert s.maps.ipcache == {ip("198.51.100.12"): s.agent.current()[both]}
    s.ask("shared.example.test")
    assert s.requests == [both]  # asked once, then known


def test_concurrent_answers_share_one_request(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.ask("img.cdn.example.test")

    async def two() -> None:
        wire = dns.message.make_query("shared.example.test", "A").to_wire()
        await asyncio.gather(*(s.core.handle(wire, CLIENT, SERVER, "UDP") for _ in range(2)))
    asyncio.run(two())
    assert s.requests == [frozenset({SELECTORS[1], SELECTORS[3]})]


def test_agent_down_fails_closed_to_one_selector(tmp_path: Path) -> None:
    s = Setup(tmp_path, agent=False)
    s.ask("img.cdn.example.test")
    s.ask("shared.example.test")
    first = s.agent.current()[frozenset({sorted([SELECTORS[1], SELECTORS[3]])[0]})]
    assert set(s.maps.ipcache.values()) == {first}
    s.ask("shared.example.test")
    assert len(s.requests) == 1  # not asked again before Identities.RETRY_AFTER


def test_pod_entries_are_never_overwritten(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.maps.owned.add(ip("198.51.100.12"))
    s.ask("img.cdn.example.test")
    assert s.maps.ipcache == {}


def test_expiry_waits_for_open_connections(tmp_path: Path) -> None:
    s = Setup(tmp_path, ttl=2)
    s.ask("img.cdn.example.test")
    target = ip("198.51.100.12")
    s.now += 1
    assert s.core.gc() == 0 and target in s.maps.ipcache
    s.now += 2
    s.maps.open.add(target)
    assert s.core.gc() == 0 and target in s.maps.ipcache  # expired, but a connection is open
    s.maps.open.clear()
    assert s.core.gc() == 1 and s.maps.ipcache == {}


def test_min_ttl_keeps_short_answers(tmp_path: Path) -> None:
    s = Setup(tmp_path, ttl=1, min_ttl=10)
    s.ask("img.cdn.example.test")
    s.now += 5
    assert s.core.gc() == 0 and s.maps.ipcache


def test_selector_removed_from_policy_removes_ipcache_entries(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.ask("img.cdn.example.test")
    s.agent.sync([SELECTORS[0]])
    import os
    st = (tmp_path / "fqdn-identities.json").stat()
    os.utime(tmp_path / "fqdn-identities.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    s.core.gc()
    assert s.maps.ipcache == {}


def test_clean_forgets_everything(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.ask("img.cdn.example.test")
    assert s.core.clean() == 1 and s.maps.ipcache == {} and s.core.cache.rows(0) == []


def test_not_a_local_endpoint_is_dropped(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    assert s.ask("img.cdn.example.test", client=("10.9.9.9", 1)) is None


def test_tcp_queries_judged_by_the_tcp_port_entry(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    assert s.ask("img.cdn.example.test", protocol="TCP").rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize(("wire", "expect"), [
    (b"", None),  # no header: dropped
    (b"\x12\x34\x01", None),
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03api", dns.rcode.FORMERR),  # truncated question
    # a question name that is a compression pointer to itself (a loop)
    (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),
    (b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", dns.rcode.FORMERR),  # no question
])
def test_malformed_queries(tmp_path: Path, wire: bytes, expect: int | None) -> None:
    s = Setup(tmp_path)
    out = asyncio.run(s.core.handle(wire, CLIENT, SERVER, "UDP"))
    if expect is None:
        assert out is None
    else:
        assert out is not None
        reply = dns.message.from_wire(out)
        assert reply.rcode() == expect and reply.id == 0x1234
    assert s.upstream_calls == 0
    assert s.ask("img.cdn.example.test").rcode() == dns.rcode.NOERROR  # and it keeps serving


def test_responses_sent_as_queries_are_dropped(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    reply = dns.message.make_response(dns.message.make_query("img.cdn.example.test", "A"))
    assert asyncio.run(s.core.handle(reply.to_wire(), CLIENT, SERVER, "UDP")) is None


def test_resolver_failure_is_servfail(tmp_path: Path) -> None:
    s = Setup(tmp_path)

    async def broken(data: bytes, server: tuple[str, int], protocol: str) -> bytes:
        raise OSError("unreachable")

    s.core.upstream = broken
    assert s.ask("img.cdn.example.test").rcode() == dns.rcode.SERVFAIL


def test_identity_requests_without_an_agent_raise_for_identities_to_fail_closed() -> None:
    from cilia.api.client import AgentUnavailable
    from cilia.paths import NodePaths
    from cilia.proxy.dns_server import IdentityRequests

    paths = NodePaths("unit-no-such-node")  # no agent socket there
    assert not paths.socket.exists()
    requests = IdentityRequests(paths)
    requests.warm()
    with pytest.raises(AgentUnavailable):
        requests(frozenset({SELECTORS[1], SELECTORS[3]}))
    requests.close()


def test_a_set_allocated_later_reaches_the_addresses_that_needed_it(tmp_path: Path) -> None:
    s = Setup(tmp_path, agent=False)
    s.ask("img.cdn.example.test")
    s.ask("shared.example.test")  # fail closed: one selector's identity
    both = frozenset({SELECTORS[1], SELECTORS[3]})
    number = s.agent.request(both)  # the agent allocates it after all (another node's ask, a restart)
    calls: list[int] = []
    real = s.identities.selectors_of
    s.identities.selectors_of = lambda names: calls.append(len(names)) or real(names)  # type: ignore[method-assign]
    s.core.gc()
    assert s.maps.ipcache == {ip("198.51.100.12"): number}
    assert calls == []  # only set numbers changed: no address's names were matched again
