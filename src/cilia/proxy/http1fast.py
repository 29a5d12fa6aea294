"""cilia-proxy's HTTP/1.1 fast path: one redirected connection served with asyncio Protocols (no
streams, no h11), for ordinary requests.

Per request: the head is framed and checked by cilia.proxy.http1wire (a head byte for byte the
previous request's is that head again: neither parsed nor decoded twice), the request judged as the
h11 path judges it (cilia.proxy.policy, the same Request), and then either answered `403 Access
denied` (never sent on) or sent on to the server as the client's own bytes (a headerMatches
ADD / DELETE / REPLACE action rewrites the head, and only then). The answer streams back as the
server's bytes; only its framing is read (where it ends, its status code), for the access record
and to know when the next request may go. Requests are served one at a time in order, so a
pipeline is answered in order, a denied request's 403 in its place. One upstream connection per
client connection, opened at the first allowed request (again after the server closed it).

Back-pressure: a client that does not read its answers pauses reading from the server; a server
that does not read pauses reading from the client; requests the client pipelines beyond
PAUSE_AT bytes pause it as well. Timeouts as the h11 path's: `idle_timeout` without a byte from a
client while it owes a request (slowloris), `upstream_timeout` without a byte from the server
while it owes an answer.

Anything else is not this module's: at the first request http1wire calls Unusual (Upgrade,
CONNECT, Expect, an HTTP/1.0 or malformed or oversized request, a request cut by the client's
close), or first bytes that may be HTTP/2's preface, the connection (its bytes not yet used
included) is handed to the streams path (`Route.fallback`: cilia.proxy.http's h11 path or
cilia.proxy.h2proxy), which answers exactly as it always did.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import h11

from cilia.proxy.http import DENIED_BODY, ConnInfo
from cilia.proxy.http1wire import RequestHead, ResponseError, ResponseFraming, Unusual, parse_request
from cilia.proxy.policy import Judgement, Request, apply_mismatches

log = logging.getLogger(__name__)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # as cilia.proxy.h2proxy's
PAUSE_AT = 256 * 1024  # pipelined bytes buffered while an answer is under way before the client is paused
_REWRITING = frozenset({"ADD", "DELETE", "REPLACE"})

# (reader, writer, at_start): at_start, the connection's first bytes are in `reader` (maybe HTTP/2's preface)
Fallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bool], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Route:
    """What one client connection needs: its judge and observer, its upstream, its streams path."""

    info: ConnInfo
    connect: Callable[[], Awaitable[socket.socket]]  # a connected upstream socket (identity, mark, source)
    fallback: Fallback
    fast: bool = True  # False: every connection goes to `fallback` at its start


def _denied(close: bool) -> bytes:
    """The h11 path's 403, byte for byte (h11 adds `Connection: close` when the request asked to close)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    conn.next_event()
    conn.next_event()
    headers = [("content-type", "text/plain"), ("content-length", str(len(DENIED_BODY)))]
    return b"".join(conn.send(e) or b"" for e in (h11.Response(status_code=403, headers=headers, reason=b"Forbidden"),
                                                  h11.Data(data=DENIED_BODY), h11.EndOfMessage()))


DENIED = _denied(False)
DENIED_CLOSE = _denied(True)

_IDLE, _CONNECTING, _WAITING, _CLOSED, _HANDED = range(5)


def request_of(head: RequestHead) -> Request:
    """The policy's view of the request, as the h11 path builds it (names lower-cased, values as sent)."""
    headers: dict[str, list[str]] = {}
    pairs = []
    for raw_name, raw_value in head.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        pairs.append((name, value))
        headers.setdefault(name.lower(), []).append(value)
    return Request(head.method.decode("latin-1"), head.target.decode("latin-1"), headers["host"][0], headers,
                   "HTTP/1.1", tuple(pairs))


def rewritten(head: RequestHead, buf: bytes, judgement: Judgement) -> bytes:
    """The request with its head rebuilt after the headerMatches mismatch actions."""
    headers = apply_mismatches(head.headers, judgement.mismatches)
    return (b"%s %s HTTP/1.1\r\n" % (head.method, head.target) + b"".join(b"%s: %s\r\n" % h for h in headers)
            + b"\r\n" + buf[head.head_end:head.end])


class _ServerLeg(asyncio.Protocol):
    """The upstream connection: everything it hears goes to its client leg."""

    def __init__(self, client: ClientLeg) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's subclasses

    def data_received(self, data: bytes) -> None:
        self.client.from_server(self, data)

    def eof_received(self) -> bool:
        self.client.server_gone(self)  # now: no request may be written to it meanwhile
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.server_gone(self)

    def pause_writing(self) -> None:
        if self.client.up is self:
            self.client.set_paused_by_server(True)

    def resume_writing(self) -> None:
        if self.client.up is self:
            self.client.set_paused_by_server(False)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ClientLeg(asyncio.Protocol):
    """One client connection (see the module's docstring)."""

    def __init__(self, route_of: Callable[[asyncio.Transport], Route | None], tasks: set[asyncio.Task[None]], *,
                 idle_timeout: float = 30.0, upstream_timeout: float = 60.0) -> None:
        self.route_of = route_of
        self.tasks = tasks  # the server's: tasks it started (the upstream connect, a fallback) stay referenced
        self.idle_timeout = idle_timeout
        self.upstream_timeout = upstream_timeout
        self.state = _IDLE
        self.buf = b""
        self.eof = False
        self.first = True  # no request seen yet: the bytes may be HTTP/2's preface
        self.up: _ServerLeg | None = None
        self.framing: ResponseFraming | None = None
        self.spare: ResponseFraming | None = None
        self.current: tuple[Request, Judgement, bool] | None = None
        self.started_ns = 0
        self.pending = b""  # the request waiting for its upstream connection
        # the last request's head (its bytes, as parsed, the policy's view): a client asking the
        # same again (keep-alive polling, load generators) is neither parsed nor decoded again
        self.last_bytes = b""
        self.last_head: RequestHead | None = None
        self.last_request: Request | None = None
        self.write_paused = False  # the client does not read: the server is not read either
        self.paused_by_server = False
        self.reading_paused = False
        self.handoff_pending: bool | None = None
        self.last_in = self.last_up = time.monotonic()
        self.timer: asyncio.TimerHandle | None = None

    # ----- the client's side ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's subclasses
        self.loop = asyncio.get_running_loop()
        try:
            route = self.route_of(self.transport)
        except Exception:  # one connection's trouble must not end the server
            log.exception("proxied connection: no route")
            route = None
        if route is None:
            self.state = _CLOSED
            self.transport.close()
            return
        self.route = route
        self.info = route.info
        self.timer = self.loop.call_later(self.idle_timeout, self._tick)

    def data_received(self, data: bytes) -> None:
        self.last_in = time.monotonic()
        self.buf = self.buf + data if self.buf else data
        if self.state == _IDLE:
            self._next()
        elif self.state != _CLOSED and len(self.buf) > PAUSE_AT:
            self._update_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.state == _IDLE:
            self._next()
        return True  # half-open: the answer under way still goes out

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != _HANDED:
            self._close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()
        if self.handoff_pending is not None and self.state == _IDLE:
            self._hand_off(self.handoff_pending)

    def set_paused_by_server(self, paused: bool) -> None:
        self.paused_by_server = paused
        self._update_reading()

    def _update_reading(self) -> None:
        if self.state in (_CLOSED, _HANDED):
            return
        pause = self.paused_by_server or (self.state != _IDLE and len(self.buf) > PAUSE_AT)
        if pause != self.reading_paused:
            self.reading_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def _next(self) -> None:
        """Serves the buffered requests while no answer is under way."""
        while self.state == _IDLE:
            buf = self.buf
            if not buf:
                if self.eof:
                    self._close()
                return
            if self.first:
                n = min(len(buf), len(PREFACE))
                # HTTP/2 (or not yet known): the streams path decides, as it always did
                if buf[:n] == PREFACE[:n] or not self.route.fast:
                    self._hand_off(True)
                    return
            head = self.last_head
            # the same head bytes as the last request's: the same head (its first blank line is where
            # theirs was); its body's end with them, unless chunked (then never kept)
            if head is None or not buf.startswith(self.last_bytes) or len(buf) < head.end:
                try:
                    head = parse_request(buf)
                except Unusual as exc:
                    log.debug("to the h11 path: %s", exc)
                    self._hand_off(self.first)
                    return
                if head is not None and not head.chunked:
                    self.last_bytes, self.last_head, self.last_request = buf[:head.head_end], head, None
            if head is None:
                if self.eof:  # cut mid-request: the h11 path answers it as it always has
                    self._hand_off(self.first)
                else:
                    self._update_reading()
                return
            self.first = False
            self.buf = buf[head.end:] if head.end < len(buf) else b""
            self._request(head, buf)
        self._update_reading()

    def _request(self, head: RequestHead, buf: bytes) -> None:
        if head is self.last_head:
            request = self.last_request
            if request is None:
                request = self.last_request = request_of(head)
        else:
            request = request_of(head)
        judgement = self.info.judge(request)
        self.info.observer.request(request, judgement)
        if not judgement.forward:
            log.debug("denied %s %s (endpoint %d)", request.method, request.path, judgement.endpoint_id)
            self.transport.write(DENIED_CLOSE if head.close else DENIED)
            if head.close:
                self._close()
            return
        if judgement.mismatches and any(a in _REWRITING for _n, _v, a in judgement.mismatches):
            data = rewritten(head, buf, judgement)
        else:
            data = buf[:head.end] if head.end < len(buf) else buf
        self.current = (request, judgement, head.close)
        framing = self.spare
        if framing is None:
            framing = ResponseFraming(head.method == b"HEAD")
        else:  # the last answer's, done with: made anew, not allocated anew
            self.spare = None
            framing.__init__(head.method == b"HEAD")  # type: ignore[misc]
        self.framing = framing
        self.started_ns = time.monotonic_ns()
        self.last_up = time.monotonic()
        if self.up is None:
            self.state = _CONNECTING
            self.pending = data
            task = self.loop.create_task(self._connect())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.state = _WAITING
            assert self.up.transport is not None
            self.up.transport.write(data)

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.upstream_timeout):
                sock = await self.route.connect()
                transport, leg = await self.loop.create_connection(lambda: _ServerLeg(self), sock=sock)
        except (TimeoutError, OSError) as exc:
            log.debug("upstream connection failed: %r", exc)
            self._close()
            return
        except Exception:
            log.exception("upstream connection failed")
            self._close()
            return
        if self.state != _CONNECTING:  # the client went away meanwhile
            transport.close()
            return
        self.up = leg
        if self.write_paused:
            transport.pause_reading()
        self.state = _WAITING
        self.last_up = time.monotonic()
        transport.write(self.pending)
        self.pending = b""

    # ----- the server's side ----------------------------------------------------------------------
    def from_server(self, leg: _ServerLeg, data: bytes) -> None:
        if leg is not self.up:
            return
        self.last_up = time.monotonic()
        framing = self.framing
        if self.state != _WAITING or framing is None:  # nothing was asked: that connection is of no more use
            self._drop_upstream()
            return
        try:
            out, used = framing.feed(data)
        except ResponseError as exc:
            log.debug("upstream answer: %s", exc)
            self._close()
            return
        if out:
            self.transport.write(out)
        if framing.done:
            self._answered(used < len(data))

    def server_gone(self, leg: _ServerLeg) -> None:
        if leg is not self.up:
            return
        self.up = None
        self._server_went()
        if self.state == _WAITING and self.framing is not None:
            if self.framing.eof():  # a body delimited by the server's close
                self._answered(False)
            else:
                log.debug("upstream closed mid-answer")
                self._close()

    def _answered(self, extra: bool) -> None:
        assert self.framing is not None and self.current is not None
        framing, (request, judgement, close) = self.framing, self.current
        self.framing = self.current = None
        self.spare = framing
        self.info.observer.response(request, judgement, framing.code, time.monotonic_ns() - self.started_ns)
        if extra or framing.close:  # the server sent more than the answer, or closes: not used again
            self._drop_upstream()
        if close or framing.close:
            self._close()
            return
        self.state = _IDLE
        self.last_in = time.monotonic()
        self._next()

    def _drop_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.close()
        self._server_went()

    def _server_went(self) -> None:
        if self.paused_by_server:  # a full write buffer of a connection that is gone holds nothing back
            self.paused_by_server = False
            self._update_reading()

    # ----- ends -----------------------------------------------------------------------------------
    def _tick(self) -> None:
        self.timer = None
        if self.state in (_CLOSED, _HANDED):
            return
        now = time.monotonic()
        if self.state == _IDLE:
            deadline = self.last_in + self.idle_timeout
        elif self.write_paused:  # a client slow to read its answer: no timeout, as the h11 path's drain
            deadline = now + self.idle_timeout
        else:
            deadline = self.last_up + self.upstream_timeout
        if now >= deadline:
            log.debug("connection timed out")
            self._close()
            return
        self.timer = self.loop.call_later(deadline - now, self._tick)

    def _close(self) -> None:
        if self.state in (_CLOSED, _HANDED):
            return
        self.state = _CLOSED
        self._drop_upstream()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport.close()

    def _hand_off(self, at_start: bool) -> None:
        """The streams path takes the connection from here: the bytes not yet used, and what follows."""
        if self.write_paused:  # a stream writer must start with an empty buffer: its flow control knows no past
            self.handoff_pending = at_start
            return
        self.handoff_pending = None
        self.state = _HANDED
        self._drop_upstream()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.reading_paused:  # the stream reader's own flow control takes over
            self.reading_paused = False
            self.transport.resume_reading()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if self.buf:
            reader.feed_data(self.buf)
            self.buf = b""
        if self.eof:
            reader.feed_eof()
        writer = asyncio.StreamWriter(self.transport, protocol, reader, self.loop)
        task = self.loop.create_task(self.route.fallback(reader, writer, at_start))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
