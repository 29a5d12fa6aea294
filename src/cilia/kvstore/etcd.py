"""EtcdClient: the KvClient contract over a real etcd cluster (etcd's v3 gRPC API, through
python3-etcd3's generated bindings and channels).

Failover and time bounds are ours, not the library's: python3-etcd3's MultiEndpointEtcd3Client
never retries a request and shuns a failed member for 300 s, and its watcher shares one stream
per client, reports a broken stream as a bare gRPC error and never moves to another member. Here
every call runs against one deadline (`timeout`): it tries the member in use, then the others
(members that failed in the last `retry_after` s last), and moves on when a member is unreachable,
too slow or without a leader; when every member failed it raises KvError naming each endpoint and
what it said. A call the store refused (a lease it does not know) raises KvError at once.

A write retried on another member after a timeout may have been applied by the first: `create`
and `update_if` may then answer False for a write that happened. Callers that must know read the
key back (the identity allocator does).

Each watch has a stream of its own on the member in use, created with `hasleader` (a member cut
off from the quorum ends the watch instead of going quiet) and progress notifications (the
reflector's revision moves on even when its prefix is idle, which makes a compaction resync
rarer). gRPC keepalive pings on the stream notice a member that vanished without closing it.

Endpoints: `http://host:port` (IPv6 as `http://[addr]:port`), `https://host:port` (TLS:
`tls` gives the CA and the client certificate, cilia.kvstore.tls), `host:port` (TLS when `tls` is
given), or a gRPC unix target `unix:/path/etcd.sock:port` (plain: the lab's members listen on a
socket file named `etcd.sock:port`). A failed TLS handshake is reported with what it means
("the member's certificate is not signed by a trusted CA: give the CA ...")."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd3
import grpc
from etcd3 import etcdrpc
from etcd3.etcdrpc import kv_pb2
from google.protobuf import unknown_fields

from cilia.kvstore.api import (
    Cancel,
    Cmp,
    Compacted,
    Delete,
    ErrorCallback,
    KeyValue,
    KvError,
    KvStatus,
    Put,
    WatchCallback,
    WatchEvent,
)
from cilia.kvstore.tls import KvTls, handshake_hint

log = logging.getLogger(__name__)
T = TypeVar("T")

# Codes that say "this member, not this request": try another member.
_MEMBER_FAILURES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
                    grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
# Keepalive pings only while a call (a watch) is open: etcd's default enforcement (5 s minimum,
# none without a stream) answers more with GOAWAY too_many_pings.
_CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0), ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
_REQUIRE_LEADER = (("hasleader", "true"),)
# StatusResponse.raftAppliedIndex (etcd 3.4): newer than python3-etcd3's rpc.proto, read as an
# unknown field, so `cilia status` can show the member's lag (raftIndex - raftAppliedIndex)
_RAFT_APPLIED_INDEX = 7


def _key(text: str) -> bytes:
    # surrogateescape: a key that is not UTF-8 (garbage written by hand) round-trips
    return text.encode("utf-8", "surrogateescape")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _range_end(prefix: bytes) -> bytes:
    return etcd3.utils.prefix_range_end(prefix)  # type: ignore[no-any-return]


def parse_endpoint(text: str) -> tuple[str, int]:
    """(gRPC host, port) of an endpoint as the agent's flag takes it (ValueError if unusable)."""
    host, port, _scheme = parse_target(text)
    return host, port


def parse_target(text: str) -> tuple[str, int, str]:
    """(gRPC host, port, scheme: "http", "https", "unix" or "" for a bare host:port)."""
    text = text.strip()
    if text.startswith("unix:"):
        path, sep, number = text.rpartition(":")
        if not sep or not number.isdigit() or path in ("", "unix"):
            raise ValueError(f"etcd endpoint {text!r}: a unix target needs a port (unix:/path/etcd.sock:2379)")
        return path, int(number), "unix"
    bare = "://" not in text
    if bare:
        text = f"http://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"etcd endpoint {text!r}: only http:// (plain gRPC) and https:// (TLS) are supported")
    try:
        port = parts.port or 2379
    except ValueError as exc:
        raise ValueError(f"etcd endpoint {text!r}: {exc}") from exc
    host = parts.hostname
    if not host:
        raise ValueError(f"etcd endpoint {text!r}: no host")
    return (f"[{host}]" if ":" in host else host), port, "" if bare else parts.scheme


@dataclass
class _Member:
    label: str  # the endpoint as configured, for messages
    endpoint: Any  # etcd3.Endpoint: owns the gRPC channel (which reconnects by itself)
    kv: Any = field(init=False)
    lease: Any = field(init=False)
    watch: Any = field(init=False)
    maintenance: Any = field(init=False)
    failed_at: float = 0.0

    def __post_init__(self) -> None:
        channel = self.endpoint.channel
        self.kv = etcdrpc.KVStub(channel)
        self.lease = etcdrpc.LeaseStub(channel)
        self.watch = etcdrpc.WatchStub(channel)
        self.maintenance = etcdrpc.MaintenanceStub(channel)


class EtcdClient:
    def __init__(self, endpoints: list[str], timeout: float = 5.0, retry_after: float = 2.0,
                 page_size: int = 1000, tls: KvTls | None = None) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoints")
        self.timeout = timeout
        self.page_size = page_size
        self.retry_after = retry_after
        self._members: list[_Member] = []
        credentials: grpc.ChannelCredentials | None = None
        for text in endpoints:
            host, port, scheme = parse_target(text)
            if scheme == "https" or (scheme == "" and tls is not None):
                if credentials is None:  # the files read once (KvTlsError naming one that is unusable)
                    credentials = (tls or KvTls()).credentials()
                endpoint = etcd3.Endpoint(host, port, secure=True, creds=credentials, opts=_CHANNEL_OPTIONS)
            else:
                endpoint = etcd3.Endpoint(host, port, secure=False, opts=_CHANNEL_OPTIONS)
            self._members.append(_Member(text, endpoint))
        self._current = self._members[0]
        self._lock = threading.Lock()
        self._watches: set[_WatchStream] = set()
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        return [m.label for m in self._members]

    @property
    def endpoint(self) -> str:
        """The member this client talks to now."""
        return self._current.label

    # ----- calls with failover -------------------------------------------------------------------
    def _candidates(self) -> list[_Member]:
        now = time.monotonic()
        with self._lock:
            current = self._current
        return sorted(self._members, key=lambda m: (now - m.failed_at < self.retry_after, m is not current))

    def _use(self, member: _Member) -> None:
        with self._lock:
            if self._current is not member:
                log.info("etcd: now using member %s", member.label)
            self._current = member

    def _fail(self, member: _Member) -> None:
        member.failed_at = time.monotonic()

    def _call(self, what: str, rpc: Callable[[_Member, float], T]) -> T:
        if self._closed:
            raise KvError(f"etcd: {what}: client closed")
        deadline = time.monotonic() + self.timeout
        errors: list[str] = []
        for member in self._candidates():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                errors.append(f"{member.label}: not tried (deadline)")
                continue
            try:
                result = rpc(member, remaining)
            except grpc.RpcError as exc:
                code = exc.code()
                details = exc.details()
                if code in _MEMBER_FAILURES:
                    self._fail(member)
                    hint = handshake_hint(details or "")
                    errors.append(f"{member.label}: {code.name.lower()} ({details})" + (f" [{hint}]" if hint else ""))
                    continue
                raise KvError(f"etcd {member.label}: {what}: {details or code.name}") from exc
            self._use(member)
            return result
        raise KvError(f"etcd: {what} failed on every member within {self.timeout:g} s: {'; '.join(errors)}")

    # ----- KvClient ------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        request = etcdrpc.RangeRequest(key=_key(key))
        response = self._call(f"get {key}", lambda m, t: m.kv.Range(request, timeout=t))
        return _keyvalue(response.kvs[0]) if response.kvs else None

    def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """In pages of `page_size` keys, every page read at the first page's revision (one
        consistent snapshot; gRPC refuses answers over 4 MiB, 10,000 objects can be more)."""
        raw = _key(prefix)
        end = _range_end(raw)
        start, revision = raw, 0
        out: list[KeyValue] = []
        for _ in range(1_000_000):  # bounded: each page moves past its last key
            request = etcdrpc.RangeRequest(key=start, range_end=end, limit=self.page_size, revision=revision)
            response = self._call(f"list {prefix}", partial(_range, request))
            revision = revision or int(response.header.revision)
            out.extend(_keyvalue(kv) for kv in response.kvs)
            if not response.more or not response.kvs:
                break
            start = bytes(response.kvs[-1].key) + b"\x00"
        return out, revision

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        request = etcdrpc.PutRequest(key=_key(key), value=value, lease=lease)
        response = self._call(f"put {key}", lambda m, t: m.kv.Put(request, timeout=t))
        return int(response.header.revision)

    def _txn(self, what: str, compare: Any, success: Any) -> bool:
        request = etcdrpc.TxnRequest(compare=[compare], success=[success], failure=[])
        response = self._call(what, lambda m, t: m.kv.Txn(request, timeout=t))
        return bool(response.succeeded)

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Put | Delete]) -> int:
        conditions = []
        for cmp in compares:
            raw = _key(cmp.key)
            condition = etcdrpc.Compare(key=raw, result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.MOD,
                                        mod_revision=cmp.mod_revision)
            if cmp.prefix:
                condition.range_end = _range_end(raw)
            conditions.append(condition)
        requests = [
            etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=_key(op.key), value=op.value, lease=op.lease))
            if isinstance(op, Put) else
            etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=_key(op.key)))
            for op in ops
        ]
        request = etcdrpc.TxnRequest(compare=conditions, success=requests, failure=[])
        what = f"txn on {', '.join(sorted({op.key for op in ops})) or 'nothing'}"
        response = self._call(what, lambda m, t: m.kv.Txn(request, timeout=t))
        return int(response.header.revision) if response.succeeded else 0

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        compare = etcdrpc.Compare(key=_key(key), result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.CREATE,
                                  create_revision=0)
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=_key(key), value=value, lease=lease))
        return self._txn(f"create {key}", compare, put)

    def update_if(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        compare = etcdrpc.Compare(key=_key(key), result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.MOD,
                                  mod_revision=mod_revision)
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=_key(key), value=value, lease=lease))
        return self._txn(f"update {key}", compare, put)

    def delete(self, key: str) -> bool:
        request = etcdrpc.DeleteRangeRequest(key=_key(key))
        response = self._call(f"delete {key}", lambda m, t: m.kv.DeleteRange(request, timeout=t))
        return int(response.deleted) > 0

    def delete_if(self, key: str, mod_revision: int) -> bool:
        compare = etcdrpc.Compare(key=_key(key), result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.MOD,
                                  mod_revision=mod_revision)
        delete = etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=_key(key)))
        return self._txn(f"delete {key}", compare, delete)

    def delete_prefix(self, prefix: str) -> int:
        raw = _key(prefix)
        request = etcdrpc.DeleteRangeRequest(key=raw, range_end=_range_end(raw))
        response = self._call(f"delete {prefix}*", lambda m, t: m.kv.DeleteRange(request, timeout=t))
        return int(response.deleted)

    def grant_lease(self, ttl_seconds: int) -> int:
        request = etcdrpc.LeaseGrantRequest(TTL=ttl_seconds, ID=0)
        response = self._call("grant lease", lambda m, t: m.lease.LeaseGrant(request, timeout=t))
        if response.error:
            raise KvError(f"etcd {self.endpoint}: grant lease: {response.error}")
        return int(response.ID)

    def keepalive(self, lease: int) -> bool:
        def once(member: _Member, timeout: float) -> int:
            responses = member.lease.LeaseKeepAlive(iter([etcdrpc.LeaseKeepAliveRequest(ID=lease)]),
                                                    timeout=timeout)
            for response in responses:
                return int(response.TTL)
            raise KvError(f"etcd {member.label}: keepalive lease {lease:x}: no answer")
        return self._call(f"keepalive lease {lease:x}", once) > 0

    def revoke(self, lease: int) -> None:
        request = etcdrpc.LeaseRevokeRequest(ID=lease)
        try:
            self._call(f"revoke lease {lease:x}", lambda m, t: m.lease.LeaseRevoke(request, timeout=t))
        except KvError as exc:
            if "not found" not in str(exc):  # already expired: nothing to revoke
                raise

    def compact(self, revision: int) -> None:
        """Forget history before `revision` (tests and operators; agents never compact)."""
        request = etcdrpc.CompactionRequest(revision=revision, physical=True)
        self._call(f"compact {revision}", lambda m, t: m.kv.Compact(request, timeout=t))

    def watch_prefix(self, prefix: str, start_revision: int, on_events: WatchCallback,
                     on_error: ErrorCallback) -> Cancel:
        if self._closed:
            raise KvError(f"etcd: watch {prefix}: client closed")
        member = self._candidates()[0]
        stream = _WatchStream(self, member, prefix, start_revision, on_events, on_error)
        with self._lock:
            self._watches.add(stream)
        stream.start()
        return stream.cancel

    def status(self) -> KvStatus:
        try:
            def rpc(member: _Member, timeout: float) -> tuple[_Member, Any]:
                return member, member.maintenance.Status(etcdrpc.StatusRequest(), timeout=timeout)
            member, response = self._call("status", rpc)
        except KvError as exc:
            return KvStatus(False, self.endpoint, error=str(exc))
        return KvStatus(True, member.label, member_id=f"{response.header.member_id:x}",
                        leader_id=f"{response.leader:x}", revision=int(response.header.revision),
                        raft_index=int(response.raftIndex),
                        raft_applied_index=_unknown_varint(response, _RAFT_APPLIED_INDEX))

    def close(self) -> None:
        self._closed = True
        with self._lock:
            watches = list(self._watches)
        for stream in watches:
            stream.cancel()
        for member in self._members:
            member.endpoint.close()

    def _forget(self, stream: _WatchStream) -> None:
        with self._lock:
            self._watches.discard(stream)


def _range(request: Any, member: _Member, timeout: float) -> Any:
    return member.kv.Range(request, timeout=timeout)


def _unknown_varint(message: Any, number: int) -> int:
    """A varint field the bindings' (older) .proto does not name, 0 if absent."""
    try:
        fields = unknown_fields.UnknownFieldSet(message)
        for index in range(len(fields)):
            entry = fields[index]
            if entry.field_number == number and entry.wire_type == 0:
                return int(entry.data)
    except (TypeError, ValueError, AttributeError):
        pass
    return 0


def _keyvalue(kv: Any) -> KeyValue:
    return KeyValue(_text(kv.key), bytes(kv.value), int(kv.create_revision), int(kv.mod_revision), int(kv.lease))


class _WatchStream:
    """One watch: its own gRPC stream on one member, read by its own thread."""

    def __init__(self, client: EtcdClient, member: _Member, prefix: str, start_revision: int,
                 on_events: WatchCallback, on_error: ErrorCallback) -> None:
        self._client = client
        self._member = member
        self._prefix = prefix
        self._start = start_revision
        self._on_events = on_events
        self._on_error = on_error
        self._stopped = threading.Event()
        self._created = threading.Event()
        self._call: Any = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"cilia-etcd-watch-{prefix}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._stopped.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._client._forget(self)

    def _requests(self) -> Iterator[Any]:
        raw = _key(self._prefix)
        yield etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=raw, range_end=_range_end(raw), start_revision=max(self._start, 0), progress_notify=True))
        self._stopped.wait()  # keep the stream open until cancelled

    def _creation_deadline(self) -> None:
        if not self._created.wait(self._client.timeout) and not self._stopped.is_set():
            self._error = KvError(f"etcd {self._member.label}: watch {self._prefix}: not created within "
                                  f"{self._client.timeout:g} s")
            self._client._fail(self._member)
            call = self._call
            if call is not None:
                call.cancel()

    def _run(self) -> None:
        label = self._member.label
        try:
            self._call = self._member.watch.Watch(self._requests(), metadata=_REQUIRE_LEADER)
            if self._stopped.is_set():
                self._call.cancel()
            threading.Thread(target=self._creation_deadline, daemon=True,
                             name=f"cilia-etcd-watch-deadline-{self._prefix}").start()
            for response in self._call:
                if response.compact_revision:
                    self._error = Compacted(int(response.compact_revision))
                    break
                if response.canceled:
                    self._error = KvError(f"etcd {label}: watch {self._prefix} cancelled: "
                                          f"{response.cancel_reason or 'no reason given'}")
                    break
                if response.created:
                    self._created.set()
                    self._client._use(self._member)
                events = [_event(ev, int(response.header.revision)) for ev in response.events]
                if events or not response.created:
                    try:
                        self._on_events(events, int(response.header.revision))
                    except Exception:
                        log.exception("etcd watch %s: event callback failed", self._prefix)
            else:
                if self._error is None:
                    self._error = KvError(f"etcd {label}: watch {self._prefix}: stream closed by the member")
        except grpc.RpcError as exc:
            if self._error is None and not self._stopped.is_set():
                code = exc.code()
                if code in _MEMBER_FAILURES:
                    self._client._fail(self._member)
                hint = handshake_hint(exc.details() or "")
                self._error = KvError(f"etcd {label}: watch {self._prefix}: {code.name.lower()} ({exc.details()})"
                                      + (f" [{hint}]" if hint else ""))
        finally:
            self._created.set()  # ends the creation timer
            call = self._call
            if call is not None:
                call.cancel()
            self._client._forget(self)
        if not self._stopped.is_set() and self._error is not None:
            self._stopped.set()
            try:
                self._on_error(self._error)
            except Exception:
                log.exception("etcd watch %s: error callback failed", self._prefix)


def _event(raw: Any, header_revision: int) -> WatchEvent:
    kv = raw.kv
    revision = int(kv.mod_revision) or header_revision
    if raw.type == kv_pb2.Event.DELETE:
        return WatchEvent("delete", _text(kv.key), b"", revision)
    return WatchEvent("put", _text(kv.key), bytes(kv.value), revision)
