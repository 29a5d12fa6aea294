"""One proxied HTTP/2 cleartext connection (h2c with prior knowledge, as gRPC speaks it): every
stream judged on its own (the h2 library parses, nothing hand-rolled).

The client's connection ends here; allowed streams are carried on one upstream HTTP/2
connection to the server (opened at the first allowed stream), headers, data and trailers
relayed unchanged both ways, resets passed on. A denied stream is answered `:status 403` with
body `Access denied` and never reaches the server; the connection and its other streams go on.
Flow control: what arrives is acknowledged at once and queued for the other side, sent as its
window allows; a stream queuing more than MAX_PENDING is reset (the proxy does not buffer
without bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from cilia.proxy.http import DENIED_BODY, READ_SIZE, ConnInfo, Upstream
from cilia.proxy.policy import Judgement, Request, apply_mismatches

log = logging.getLogger(__name__)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_PENDING = 8 * 1024 * 1024
Headers = list[tuple[bytes, bytes]]


@dataclass
class _Stream:
    down_id: int
    request: Request
    judgement: Judgement
    up_id: int = 0  # 0: denied, not sent on
    started_ns: int = 0
    to_up: bytearray = field(default_factory=bytearray)
    to_down: bytearray = field(default_factory=bytearray)
    end_up: bool = False  # the client's side ended: end the upstream stream once to_up is sent
    trailers_up: Headers | None = None
    up_done: bool = False
    end_down: bool = False  # the server's side ended: end the client's stream once to_down is sent
    trailers_down: Headers | None = None
    answered: bool = False


def _request_of(headers: Headers) -> Request:
    pseudo: dict[str, str] = {}
    plain: dict[str, list[str]] = {}
    ordered: list[tuple[str, str]] = []
    for raw_name, raw_value in headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        ordered.append((name, value))
        if name.startswith(":"):
            pseudo[name] = value
        else:
            plain.setdefault(name.lower(), []).append(value)
    host = pseudo.get(":authority") or plain.get("host", [""])[0]
    return Request(pseudo.get(":method", ""), pseudo.get(":path", ""), host, plain, "HTTP/2", tuple(ordered))


class H2Proxy:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ConnInfo,
                 open_upstream: Callable[[], Awaitable[Upstream]], upstream_timeout: float) -> None:
        self.reader, self.writer, self.info = reader, writer, info
        self.open_upstream, self.upstream_timeout = open_upstream, upstream_timeout
        self.down = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.up: h2.connection.H2Connection | None = None
        self.upstream: Upstream | None = None
        self.by_down: dict[int, _Stream] = {}
        self.by_up: dict[int, _Stream] = {}
        self.up_task: asyncio.Task[None] | None = None
        self.closed = False

    # ----- downstream (the client) ----------------------------------------------------------------
    async def run(self, initial: bytes, idle_timeout: float) -> None:
        self.down.initiate_connection()
        self._flush_down()
        try:
            data = initial
            while not self.closed:
                if data:
                    for event in self.down.receive_data(data):
                        await self._down_event(event)
                    self._pump()
                    await self.writer.drain()
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), idle_timeout)
                if not data:
                    return
        except h2.exceptions.ProtocolError as exc:
            log.debug("h2 client protocol error: %s", exc)
            with contextlib.suppress(Exception):
                self.down.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
                self._flush_down()
                await self.writer.drain()
        finally:
            self.closed = True
            if self.up_task is not None:
                self.up_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.up_task
            if self.upstream is not None:
                self.upstream[1].close()

    async def _down_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            await self._request(event.stream_id, list(event.headers or []), event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            self.down.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self.by_down.get(event.stream_id)
            if stream is not None and stream.up_id:
                stream.to_up += event.data or b""
                stream.end_up = stream.end_up or event.stream_ended is not None
                if len(stream.to_up) > MAX_PENDING:
                    self._reset(stream, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.by_down.get(event.stream_id)
            if stream is not None:
                stream.end_up = True
        elif isinstance(event, h2.events.TrailersReceived):  # a request's trailers: sent on as they are
            stream = self.by_down.get(event.stream_id)
            if stream is not None and stream.up_id:
                stream.trailers_up = list(event.headers or [])
                stream.end_up = True
        elif isinstance(event, h2.events.StreamReset):
            stream = self.by_down.pop(event.stream_id, None)
            if stream is not None and stream.up_id and self.up is not None:
                self.by_up.pop(stream.up_id, None)
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.up.reset_stream(stream.up_id, event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    async def _request(self, stream_id: int, headers: Headers, ended: bool) -> None:
        request = _request_of(headers)
        judgement = self.info.judge(request)
        self.info.observer.request(request, judgement)
        stream = _Stream(stream_id, request, judgement, started_ns=time.monotonic_ns())
        if not judgement.forward:
            self.down.send_headers(stream_id, [(b":status", b"403"), (b"content-type", b"text/plain"),
                                               (b"content-length", str(len(DENIED_BODY)).encode())])
            self.down.send_data(stream_id, DENIED_BODY, end_stream=True)
            return
        if self.up is None:
            self.upstream = await asyncio.wait_for(self.open_upstream(), self.upstream_timeout)
            self.up = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            self.up.initiate_connection()
            self.up_task = asyncio.create_task(self._read_upstream())
        stream.up_id = self.up.get_next_available_stream_id()
        self.by_down[stream_id] = stream
        self.by_up[stream.up_id] = stream
        if judgement.mismatches:  # headerMatches actions; HTTP/2 header names are lower case
            headers = [(n.lower(), v) for n, v in apply_mismatches(headers, judgement.mismatches)]
        self.up.send_headers(stream.up_id, headers, end_stream=ended)

    # ----- upstream (the server) ------------------------------------------------------------------
    async def _read_upstream(self) -> None:
        assert self.upstream is not None and self.up is not None
        reader = self.upstream[0]
        try:
            while not self.closed:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                for event in self.up.receive_data(data):
                    self._up_event(event)
                self._pump()
                await self.writer.drain()
        except (ConnectionError, OSError, h2.exceptions.ProtocolError) as exc:
            log.debug("h2 upstream failed: %r", exc)
        # the server went away: the streams it carried are reset, the client's connection ends
        for stream in list(self.by_up.values()):
            self._reset(stream, h2.errors.ErrorCodes.CANCEL)
        with contextlib.suppress(Exception):
            self.down.close_connection()
            self._flush_down()
        self.closed = True
        self.writer.close()

    def _up_event(self, event: h2.events.Event) -> None:
        assert self.up is not None
        stream = self.by_up.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            headers = list(event.headers or [])
            self.down.send_headers(stream.down_id, headers, end_stream=event.stream_ended is not None)
            if not stream.answered:
                stream.answered = True
                code = next((int(v) for n, v in headers if n == b":status" and v.isdigit()), 0)
                self.info.observer.response(stream.request, stream.judgement, code,
                                            time.monotonic_ns() - stream.started_ns)
            if event.stream_ended is not None:
                self._forget(stream)  # answered without a body: done
        elif isinstance(event, h2.events.InformationalResponseReceived) and stream is not None:
            self.down.send_headers(stream.down_id, list(event.headers or []))
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            self.up.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream.to_down += event.data or b""
            stream.end_down = stream.end_down or event.stream_ended is not None
        elif isinstance(event, h2.events.DataReceived):
            self.up.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            stream.trailers_down = list(event.headers or [])
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.end_down = True
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            self.by_up.pop(stream.up_id, None)
            self.by_down.pop(stream.down_id, None)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.down.reset_stream(stream.down_id, event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    # ----- moving queued data as the windows allow ------------------------------------------------
    def _pump(self) -> None:
        for stream in list(self.by_down.values()):
            if stream.up_id and self.up is not None and not stream.up_done:
                self._drain_to_up(stream)
                if stream.end_up and not stream.to_up:
                    with contextlib.suppress(h2.exceptions.ProtocolError):
                        if stream.trailers_up is not None:
                            self.up.send_headers(stream.up_id, stream.trailers_up, end_stream=True)
                        else:
                            self.up.end_stream(stream.up_id)
                    stream.up_done = True
            self._drain_to_down(stream)
            if stream.end_down and not stream.to_down:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    if stream.trailers_down is not None:
                        self.down.send_headers(stream.down_id, stream.trailers_down, end_stream=True)
                    else:
                        self.down.end_stream(stream.down_id)
                self._forget(stream)
        self._flush_down()
        self._flush_up()

    @staticmethod
    def _send_some(conn: h2.connection.H2Connection, stream_id: int, pending: bytearray) -> None:
        while pending:
            room = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if room <= 0:
                return
            chunk = bytes(pending[:room])
            conn.send_data(stream_id, chunk)
            del pending[:room]

    def _drain_to_up(self, stream: _Stream) -> None:
        if self.up is not None and stream.to_up:
            with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                self._send_some(self.up, stream.up_id, stream.to_up)

    def _drain_to_down(self, stream: _Stream) -> None:
        if stream.to_down:
            with contextlib.suppress(h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                self._send_some(self.down, stream.down_id, stream.to_down)

    def _forget(self, stream: _Stream) -> None:
        """The answer is complete: what the client still sends on the stream is of no use to anyone."""
        self.by_up.pop(stream.up_id, None)
        self.by_down.pop(stream.down_id, None)

    def _reset(self, stream: _Stream, code: h2.errors.ErrorCodes) -> None:
        self.by_down.pop(stream.down_id, None)
        self.by_up.pop(stream.up_id, None)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.down.reset_stream(stream.down_id, code)
        if stream.up_id and self.up is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.up.reset_stream(stream.up_id, code)

    def _flush_down(self) -> None:
        data = self.down.data_to_send()
        if data:
            self.writer.write(data)

    def _flush_up(self) -> None:
        if self.up is not None and self.upstream is not None:
            data = self.up.data_to_send()
            if data:
                self.upstream[1].write(data)


async def serve_h2(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: ConnInfo,
                   open_upstream: Callable[[], Awaitable[Upstream]], initial: bytes, *,
                   idle_timeout: float = 300.0, upstream_timeout: float = 60.0) -> None:
    """Serves one h2c connection whose first bytes (`initial`, the preface included) were read already."""
    proxy = H2Proxy(reader, writer, info, open_upstream, upstream_timeout)
    try:
        await proxy.run(initial, idle_timeout)
    except (TimeoutError, ConnectionError, OSError) as exc:
        log.debug("h2 connection closed: %r", exc)
    finally:
        writer.close()
