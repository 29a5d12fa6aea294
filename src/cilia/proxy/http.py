"""One proxied HTTP/1.1 connection over streams, every request judged on its own (h11 parses,
nothing hand-rolled): the path for what the fast path (cilia.proxy.http1fast) hands over, from
the request it did not take on (Upgrade, CONNECT, Expect, HTTP/1.0, malformed, cut or oversized
requests), and for every connection with CILIA_PROXY_HTTP1_FAST=0.

Denied: `403` with body `Access denied`, and the request never reaches the server. Allowed: sent
on to the server unchanged (h11 keeps the header names' case) on one upstream connection per
client connection, opened at the first allowed request, and the answer streamed back. Keep-alive
on both sides; pipelined requests are answered in order (h11 reads the next one only after the
answer). Malformed requests and oversized heads get `400` / `431` and the connection is closed;
a client that sends nothing for `idle_timeout` is closed (slowloris).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol

import h11

from cilia.proxy.policy import Judgement, Request, apply_mismatches

log = logging.getLogger(__name__)
DENIED_BODY = b"Access denied"
MAX_HEAD = 16 * 1024  # request line and headers
MAX_BODY = 8 * 1024 * 1024  # a request body is buffered before it is sent on
READ_SIZE = 65536

Upstream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
OpenUpstream = Callable[[], Awaitable[Upstream]]


class Observer(Protocol):
    """Told of every judged request and of the answer to each forwarded one (the access log, counters)."""

    def request(self, request: Request, judgement: Judgement) -> None: ...

    def response(self, request: Request, judgement: Judgement, code: int, latency_ns: int) -> None: ...


class _NoObserver:
    def request(self, request: Request, judgement: Judgement) -> None:
        pass

    def response(self, request: Request, judgement: Judgement, code: int, latency_ns: int) -> None:
        pass


@dataclass(frozen=True)
class ConnInfo:
    judge: Callable[[Request], Judgement]  # with the current rules of the sides that have L7 rules
    observer: Observer = field(default_factory=_NoObserver)


class _Closed(Exception):
    pass


async def _receive(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> None:
    # asyncio.timeout, not wait_for: wait_for wraps every read in a task of its own (~20 µs a read)
    async with asyncio.timeout(timeout):
        data = await reader.read(READ_SIZE)
    conn.receive_data(data)


async def _next_event(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        await _receive(conn, reader, timeout)


def _send(conn: h11.Connection, writer: asyncio.StreamWriter, *events: h11.Event) -> None:
    # one write for all: a head and a body written apart wait on the peer's delayed ACK (Nagle)
    data = b"".join(conn.send(event) or b"" for event in events)
    if data:
        writer.write(data)


def _answer(status: int, body: bytes, close: bool) -> tuple[h11.Event, ...]:
    headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
    if close:
        headers.append(("connection", "close"))
    reason = HTTPStatus(status).phrase.encode() if status in HTTPStatus._value2member_map_ else b""
    return h11.Response(status_code=status, headers=headers, reason=reason), h11.Data(data=body), h11.EndOfMessage()


# the 403 is every denied request's answer: its (immutable) events built once, h11 validates headers on building
_DENIED = _answer(403, DENIED_BODY, close=False)


def _reply(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, body: bytes, close: bool) -> None:
    events = _DENIED if (status, body, close) == (403, DENIED_BODY, False) else _answer(status, body, close)
    _send(conn, writer, *events)


async def serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ConnInfo,
                           open_upstream: OpenUpstream, *, idle_timeout: float = 30.0,
                           upstream_timeout: float = 60.0, initial: bytes = b"") -> None:
    """`initial`: what was read of the connection already (to tell HTTP/1.1 from HTTP/2)."""
    down = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    if initial:
        down.receive_data(initial)
    upstream: Upstream | None = None
    up: h11.Connection | None = None
    try:
        while True:
            try:
                event = await _next_event(down, reader, idle_timeout)
            except h11.RemoteProtocolError as exc:
                if down.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = 431 if "too long" in str(exc).lower() else (exc.error_status_hint or 400)
                    _reply(down, writer, status, b"Bad request", close=True)
                    await writer.drain()
                return
            if isinstance(event, (h11.ConnectionClosed, h11.EndOfMessage)) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            body = bytearray()
            while True:
                part = await _next_event(down, reader, idle_timeout)
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > MAX_BODY:
                        _reply(down, writer, 413, b"Request too large", close=True)
                        await writer.drain()
                        return
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            request = _request_of(event)
            judgement = info.judge(request)
            info.observer.request(request, judgement)
            if not judgement.forward:
                log.debug("denied %s %s (endpoint %d)", request.method, request.path, judgement.endpoint_id)
                _reply(down, writer, 403, DENIED_BODY, close=False)
                await writer.drain()
            else:
                if upstream is None or up is None:
                    upstream = await asyncio.wait_for(open_upstream(), upstream_timeout)
                    up = h11.Connection(h11.CLIENT)
                start = time.monotonic_ns()
                if judgement.mismatches:  # headerMatches actions (ADD / DELETE / REPLACE) on what goes on
                    event = h11.Request(method=event.method, target=event.target, http_version=event.http_version,
                                        headers=apply_mismatches(list(event.headers.raw_items()),
                                                                 judgement.mismatches))
                code = await _forward(event, bytes(body), down, writer, up, upstream, upstream_timeout)
                info.observer.response(request, judgement, code, time.monotonic_ns() - start)
                if up.their_state is not h11.DONE or up.our_state is not h11.DONE:
                    upstream[1].close()
                    upstream, up = None, None
                else:
                    up.start_next_cycle()
            if down.our_state is h11.MUST_CLOSE or down.their_state is h11.MUST_CLOSE:
                return
            if down.our_state is not h11.DONE or down.their_state is not h11.DONE:
                return
            down.start_next_cycle()
    except (TimeoutError, ConnectionError, OSError, h11.LocalProtocolError, h11.RemoteProtocolError, _Closed) as exc:
        log.debug("connection closed: %r", exc)
        return
    finally:
        if upstream is not None:
            upstream[1].close()
        writer.close()


def _request_of(event: h11.Request) -> Request:
    headers: dict[str, list[str]] = {}
    for name, value in event.headers:
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    host = headers.get("host", [""])[0]
    return Request(event.method.decode("latin-1"), event.target.decode("latin-1"), host, headers,
                   f"HTTP/{event.http_version.decode('latin-1')}",
                   tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers.raw_items()))


async def _forward(request: h11.Request, body: bytes, down: h11.Connection, writer: asyncio.StreamWriter,
                   up: h11.Connection, upstream: Upstream, timeout: float) -> int:
    """Sends the request on and streams the answer back; returns its status code."""
    up_reader, up_writer = upstream
    events: list[h11.Event] = [request]
    if body:
        events.append(h11.Data(data=body))
    events.append(h11.EndOfMessage())
    _send(up, up_writer, *events)
    await up_writer.drain()
    code = 0
    out: list[bytes] = []  # what h11 gave of the answer so far: written at once when it needs more, or at its end
    while True:
        event = up.next_event()
        if event is h11.NEED_DATA:
            if out:  # a long body streams: what came is sent on before reading more
                writer.write(b"".join(out))
                out.clear()
                await writer.drain()
            await _receive(up, up_reader, timeout)
            continue
        if isinstance(event, (h11.InformationalResponse, h11.Response)):
            code = event.status_code if isinstance(event, h11.Response) else code
        elif not isinstance(event, (h11.Data, h11.EndOfMessage)):
            raise _Closed()
        out.append(down.send(event) or b"")
        if isinstance(event, h11.EndOfMessage):
            writer.write(b"".join(out))  # one write per answer: head and body in one segment
            await writer.drain()
            return code
