"""The proxies' access log: one record per proxied HTTP request/response or DNS query/answer.

The node's proxies (cilia-proxy: HTTP, DNS) run apart from the agent, so that an agent restart
cuts nothing. They hand what they judged to the agent as JSON datagrams on a unix socket the
agent binds (`NodePaths.accesslog_socket`); the agent turns each record into an L7 flow (Hubble's
`flow.Layer7`). Sending never blocks and never fails the proxied traffic: with the agent down or
its socket full a record is counted as lost and dropped, exactly as the datapath's ring buffer
loses events when nobody reads.

The field names follow Hubble's flow.proto (`Layer7`, `HTTP`, `DNS`), so the agent's side is a
copy, not a translation.
"""

from __future__ import annotations

import asyncio
import errno
import json
import re
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

L7Type = Literal["REQUEST", "RESPONSE", "SAMPLE"]
Verdict = Literal["FORWARDED", "DROPPED", "AUDIT", "ERROR"]
_T = TypeVar("_T")
MAX_DATAGRAM = 60 * 1024  # well under the unix datagram default limit; longer records are cut
FLUSH_DELAY = 0.002  # s: how long a record may wait for others to share its datagram


@dataclass(frozen=True)
class PolicyRef:
    """The policy whose rule decided (Hubble's `flow.Policy`: kind, namespace, name)."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class HttpRecord:
    """Hubble's `flow.HTTP`. `code` is 0 on a request; headers as (name, value) pairs, in order."""

    method: str
    url: str
    protocol: str  # "HTTP/1.1", "HTTP/2"
    code: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class DnsRecord:
    """Hubble's `flow.DNS`: the question, and on an answer its rcode, addresses, TTL and CNAMEs."""

    query: str  # fully qualified, with the trailing dot, as Hubble shows it
    qtypes: list[str] = field(default_factory=list)  # "A", "AAAA"
    rcode: int = 0
    ips: list[str] = field(default_factory=list)
    ttl: int = 0
    cnames: list[str] = field(default_factory=list)
    rrtypes: list[str] = field(default_factory=list)
    observation_source: str = "proxy"


@dataclass(frozen=True)
class AccessRecord:
    """One proxied request or response, judged. Addresses are the client's (source_*) and the real
    server's (destination_*), on a response too: the agent turns a response's flow around."""

    time_ns: int  # wall clock (time.time_ns()) when the proxy saw it
    type: L7Type
    verdict: Verdict
    source_ip: str
    source_port: int
    destination_ip: str
    destination_port: int
    protocol: Literal["TCP", "UDP"]
    source_identity: int
    destination_identity: int
    endpoint_id: int  # the local endpoint whose policy judged (the client on egress, the server on ingress)
    ingress: bool  # True: the destination's ingress rule judged; False: the source's egress rule
    policies: list[PolicyRef] = field(default_factory=list)
    rule_id: int = 0  # the agent's rule entry that decided, when the proxy knows no PolicyRef (0: none)
    latency_ns: int = 0  # on a response: since its request
    http: HttpRecord | None = None
    dns: DnsRecord | None = None
    summary: str = ""

    def encode(self) -> bytes:
        # By hand, not dataclasses.asdict: its deep copy cost ~35 µs a record, on every proxied request.
        raw: dict[str, Any] = dict(self.__dict__)
        raw["policies"] = [p.__dict__ for p in self.policies]
        raw["http"] = None if self.http is None else self.http.__dict__
        raw["dns"] = None if self.dns is None else self.dns.__dict__
        data = json.dumps(raw, separators=(",", ":")).encode()
        return data[:MAX_DATAGRAM]


def decode(data: bytes) -> AccessRecord:
    """A record from its datagram. Raises ValueError naming the field that is wrong.

    A record in FlowEncoder's layout whose body was decoded before is not parsed again: it is the
    record that body gave, with this head's time, latency and code (the same record a full decode
    gives: the body was checked in full then, and the head's three fields are checked here)."""
    head = RECORD_HEAD.match(data)
    if head is None:
        return _decode(data)
    body = data[head.end():]
    kept = _BODIES.get(body)
    if kept is None:
        kept = _decode(data)
        if len(body) <= _BODY_KEPT_MAX and kept.http is not None and not any(key in body for key in _HEAD_KEYS):
            if len(_BODIES) >= _BODIES_KEPT:
                _BODIES.clear()
            _BODIES[body] = kept
        return kept
    http = object.__new__(HttpRecord)  # frozen dataclasses: built without their __init__'s setattr calls
    http.__dict__.update(kept.http.__dict__, code=int(head.group(3)), headers=list(kept.http.headers))  # type: ignore[union-attr]
    out = object.__new__(AccessRecord)
    out.__dict__.update(kept.__dict__, time_ns=int(head.group(1)), latency_ns=int(head.group(2)), http=http,
                        policies=list(kept.policies))
    return out


def _decode(data: bytes) -> AccessRecord:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"access log record: not JSON: {exc}") from None
    obj = _obj(raw, "record")
    http, dns = obj.pop("http", None), obj.pop("dns", None)
    policies = _list(obj.pop("policies", []), "policies")
    _check(AccessRecord, obj, "record")
    http_obj = None
    if http is not None:
        h = _obj(http, "http")
        headers = [_pair(x, "http.headers") for x in _list(h.pop("headers", []), "http.headers")]
        http_obj = _build(HttpRecord, {**h, "headers": headers}, "http")
    dns_obj = None if dns is None else _build(DnsRecord, _obj(dns, "dns"), "dns")
    refs = [_build(PolicyRef, _obj(p, "policies[]"), "policies[]") for p in policies]
    # built once with its parts (dataclasses.replace built it a second time: the agent decodes every record)
    return _make(AccessRecord, {**obj, "http": http_obj, "dns": dns_obj, "policies": refs}, "record")


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"access log record: {where}: not a JSON object")
    return dict(value)


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"access log record: {where}: not a list")
    return value


def _pair(value: object, where: str) -> tuple[str, str]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ValueError(f"access log record: {where}: not a [name, value] pair of strings")
    return (value[0], value[1])


# What a field's JSON value must be, by its annotation: a type (json.loads makes no int or str
# subclass but bool, so `type(v) is int` is isinstance(v, int) without bools), the strings of a
# Literal, a list of strings (_STRINGS), or None: checked apart, or any value. Tests, not calls: the
# agent checks every field of every record it receives.
_STRINGS = "list[str]"
_Spec = type | frozenset[str] | str | None
_BY_KIND: dict[str, _Spec] = {
    "int": int, "str": str, "bool": bool,
    "L7Type": frozenset(get_args(L7Type)), "Verdict": frozenset(get_args(Verdict)),
    'Literal["TCP", "UDP"]': frozenset({"TCP", "UDP"}), "list[str]": _STRINGS,
}
_CHECKS: dict[type, dict[str, _Spec]] = {cls: {f.name: _BY_KIND.get(str(f.type)) for f in fields(cls)}
                                         for cls in (AccessRecord, HttpRecord, DnsRecord, PolicyRef)}
_UNKNOWN = object()


def _check(cls: type, values: dict[str, Any], where: str) -> None:
    checks = _CHECKS[cls]
    for name, value in values.items():
        spec = checks.get(name, _UNKNOWN)
        if spec is None:
            continue
        if spec is _UNKNOWN:
            raise ValueError(f"access log record: {where}.{name}: unknown field")
        if type(spec) is type:
            ok = type(value) is spec
        elif spec is _STRINGS:
            ok = type(value) is list and all(type(x) is str for x in value)
        else:
            ok = type(value) is str and value in spec  # type: ignore[operator]
        if not ok:
            kind = str(next(f.type for f in fields(cls) if f.name == name))
            raise ValueError(f"access log record: {where}.{name}: {value!r} is not a valid {kind}")


def _make(cls: type[_T], values: dict[str, Any], where: str) -> _T:
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"access log record: {where}: {exc}") from None


def _build(cls: type[_T], values: dict[str, Any], where: str) -> _T:
    _check(cls, values, where)
    return _make(cls, values, where)


_str = json.encoder.encode_basestring_ascii  # the C one json.dumps uses


class FlowEncoder:
    """The datagrams of one connection's HTTP records, built by hand: the same JSON object that
    `AccessRecord.encode` makes (same fields, `decode` gives the equal record), at a fraction of its
    cost. A record is its varying head (`time_ns`, `latency_ns`, the HTTP `code`, in that order:
    RECORD_HEAD) and the rest, `body`: the same bytes for every record of one request and verdict,
    so a caller keeps it for a repeated request (cilia.proxy.observe.AccessLog), and the agent's
    `decode` reads a body it has seen once without parsing it again."""

    def __init__(self, source_ip: str, source_port: int, destination_ip: str, destination_port: int,
                 source_identity: int, destination_identity: int, protocol: Literal["TCP", "UDP"] = "TCP") -> None:
        self._fixed = (f'"source_ip":{_str(source_ip)},"source_port":{int(source_port)},'
                       f'"destination_ip":{_str(destination_ip)},"destination_port":{int(destination_port)},'
                       f'"protocol":{_str(protocol)},"source_identity":{int(source_identity)},'
                       f'"destination_identity":{int(destination_identity)},"rule_id":0,"dns":null,')
        self._policies: dict[tuple[PolicyRef, ...], str] = {}

    def http(self, time_ns: int, kind: L7Type, verdict: Verdict, endpoint_id: int, ingress: bool,
             policies: tuple[PolicyRef, ...], latency_ns: int, summary: str, method: str, url: str, protocol: str,
             code: int, headers: Sequence[tuple[str, str]]) -> bytes:
        return record(self.body(kind, verdict, endpoint_id, ingress, policies, summary, method, url, protocol,
                                headers), time_ns, latency_ns, code)

    def body(self, kind: L7Type, verdict: Verdict, endpoint_id: int, ingress: bool, policies: tuple[PolicyRef, ...],
             summary: str, method: str, url: str, protocol: str, headers: Sequence[tuple[str, str]]) -> bytes:
        """The record but its head (see the class): from the HTTP object's other fields to the end."""
        refs = self._policies.get(policies)
        if refs is None:
            refs = "[" + ",".join(f'{{"kind":{_str(p.kind)},"namespace":{_str(p.namespace)},"name":{_str(p.name)}}}'
                                  for p in policies) + "]"
            if len(self._policies) < 64:
                self._policies[policies] = refs
        pairs = ",".join(f"[{_str(n)},{_str(v)}]" for n, v in headers)
        return (f'"method":{_str(method)},"url":{_str(url)},"protocol":{_str(protocol)},"headers":[{pairs}]}},'
                f'"type":{_str(kind)},"verdict":{_str(verdict)},{self._fixed}"endpoint_id":{int(endpoint_id)},'
                f'"ingress":{"true" if ingress else "false"},"policies":{refs},"summary":{_str(summary)}}}').encode()


def record(body: bytes, time_ns: int, latency_ns: int, code: int) -> bytes:
    """One record's datagram: its head, then a body (FlowEncoder.body)."""
    data = b'{"time_ns":%d,"latency_ns":%d,"http":{"code":%d,%s' % (time_ns, latency_ns, code, body)
    return data[:MAX_DATAGRAM]


# A record as FlowEncoder makes it: the head (JSON integers: no leading zeros, none negative here;
# anything else is decoded the long way), then the body. The agent decodes a body once and keeps
# the record it gave: a record with a kept body is that record with the head's three values.
RECORD_HEAD = re.compile(rb'\{"time_ns":(0|[1-9][0-9]{0,18}),"latency_ns":(0|[1-9][0-9]{0,18}),'
                         rb'"http":\{"code":(0|[1-9][0-9]{0,8}),')
# a body naming a head's key again would make it not the head's value (JSON: the last one wins): never kept
_HEAD_KEYS = (b'"time_ns"', b'"latency_ns"', b'"http"', b'"code"')
_BODIES: dict[bytes, AccessRecord] = {}
_BODIES_KEPT = 4096  # cleared when full; one body per connection and kind in use
_BODY_KEPT_MAX = 2048  # bytes: a body beyond (long headers) is decoded every time, so the kept stay within ~8 MB


class AccessLogSender:
    """The proxies' end: fire-and-forget datagrams to the agent's socket; `sent` and `lost` count
    records (`lost`: dropped). A datagram holds one record, or several separated by newlines (the
    JSON of a record has none): `send_soon` packs the records of FLUSH_DELAY together."""

    def __init__(self, path: Path) -> None:
        self._path = str(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._queued: list[bytes] = []
        self._queued_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0
        self.lost = 0

    def send(self, record: AccessRecord) -> None:
        self.send_encoded(record.encode())

    def send_encoded(self, data: bytes) -> None:
        self._send([data])

    def send_soon(self, data: bytes) -> None:
        """Queued, and sent within FLUSH_DELAY with every other record queued meanwhile, in as few
        datagrams as MAX_DATAGRAM allows: a sendto (and the agent's wake-up and recv) costs more
        than encoding a record, and a busy proxy serves many requests a millisecond. A full
        datagram's worth goes at once; `close` sends what is queued. Without a running loop: sent
        at once."""
        if not self._queued:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush_timer)
            except RuntimeError:
                self.send_encoded(data)
                return
        self._queued.append(data)
        self._queued_bytes += len(data) + 1
        if self._queued_bytes >= MAX_DATAGRAM:
            self.flush()

    def _flush_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queued, self._queued, self._queued_bytes = self._queued, [], 0
        datagram: list[bytes] = []
        size = 0
        for data in queued:
            if datagram and size + 1 + len(data) > MAX_DATAGRAM:
                self._send(datagram)
                datagram, size = [], 0
            size += len(data) + (1 if datagram else 0)
            datagram.append(data)
        if datagram:
            self._send(datagram)

    def _send(self, records: list[bytes]) -> None:
        try:
            self._sock.sendto(records[0] if len(records) == 1 else b"\n".join(records), self._path)
            self.sent += len(records)
        except OSError as exc:
            # no agent (ENOENT, ECONNREFUSED) or its queue full (EAGAIN): the traffic goes on regardless
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ENOBUFS,
                                 errno.EWOULDBLOCK):
                raise
            self.lost += len(records)

    def close(self) -> None:
        self.flush()
        self._sock.close()


def to_json(record: AccessRecord) -> dict[str, Any]:
    return asdict(record)
