"""One client connection of cilia's own gRPC server: gRPC over HTTP/2 (the `h2` library keeps the
connection's state, HPACK and flow control), as grpc-go and grpc C-core speak it.

Why not grpcio: it costs ~110-145 us per message, one message per flow, so a GetFlows stream
stopped at ~7,300 flows per server CPU-second. Here a call's responses are appended, each with
its 5-byte prefix, to the call's buffer and leave as few DATA frames as the peer's window and
maximum frame size allow: many flows per frame, h2's per-frame cost spread over all of them.
The buffer is sent when it reaches FLUSH_BYTES and whenever the call's task waits (a callback
the loop runs once the task is suspended), so a follower's batch goes out at once; a call whose
buffer stays above HIGH_WATER (the client reads slower than the server writes) waits for the
peer's WINDOW_UPDATE or the transport to drain.

A call: HEADERS (POST, content-type application/grpc[+proto], path) and one request message,
then the handler (a servicer's method from cilia.hubble.grpcwire.MethodTable) runs as a task.
Responses: `:status 200` headers with the first message, then messages, then trailers
(grpc-status, percent-encoded grpc-message); an error with nothing sent is a trailers-only
response. `grpc-timeout` cancels the handler (DEADLINE_EXCEEDED); a client's RST_STREAM cancels
it at once; compressed requests are refused (UNIMPLEMENTED, identity only), unknown methods are
UNIMPLEMENTED. On shutdown a GOAWAY naming the last stream accepted goes first (calls in flight
may finish), then the calls still running end UNAVAILABLE and a final GOAWAY closes it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from cilia.hubble.grpcwire import (
    MAX_RECEIVE_MESSAGE,
    PREFIX,
    CallContext,
    MethodTable,
    RpcStatus,
    parse_timeout,
    percent_encode,
    status_number,
)

log = logging.getLogger(__name__)

INITIAL_WINDOW = 4 * 1024 * 1024  # what a client may send before we acknowledge (per stream and connection)
FLUSH_BYTES = 64 * 1024  # a call's buffer goes out once this big (else when its task waits)
HIGH_WATER = 512 * 1024  # a call buffering more than this waits for the client
_H2_CONFIG = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                       normalize_outbound_headers=False)
_OK = grpc.StatusCode.OK


class _Call:
    """One stream's call: its request as it arrives, its handler task, its unsent responses."""

    __slots__ = ("blocked", "content_type", "deadline", "deadline_hit", "done", "flush_scheduled", "handler", "headers",
                 "headers_sent", "id", "out", "request", "task", "timer", "waiter")

    def __init__(self, stream_id: int, content_type: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.id = stream_id
        self.content_type = content_type
        self.headers = headers
        self.request = bytearray()
        self.handler: Any = None
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None
        self.deadline_hit = False
        self.out = bytearray()
        self.headers_sent = False
        self.flush_scheduled = False
        self.blocked = False  # the last flush left data behind (no window, or the transport paused)
        self.waiter: asyncio.Future[None] | None = None
        self.done = False  # our side has ended (trailers sent, or the stream reset)


class GrpcConnection(asyncio.Protocol):
    """gRPC server side of one HTTP/2 connection (an asyncio protocol: unix socket, TCP or TLS)."""

    def __init__(self, methods: MethodTable, on_close: Callable[[GrpcConnection], None] | None = None) -> None:
        self._methods = methods
        self._on_close = on_close
        self._conn = h2.connection.H2Connection(_H2_CONFIG)
        self._conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 * 1024 * 1024})
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[int, _Call] = {}
        self._paused = False
        self._closed = False
        self._draining = False  # the first GOAWAY has gone: no new calls
        self._peer = "unknown"
        self.idle = asyncio.Event()  # set while no call runs (shutdown waits on it)
        self.idle.set()

    # ----- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        peer = transport.get_extra_info("peername")
        self._peer = f"ipv4:{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unix:"
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(INITIAL_WINDOW - 65535)
        self._write()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        for call in list(self._calls.values()):
            self._abandon(call)
        self._calls.clear()
        self.idle.set()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._writable()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:  # h2 has queued its GOAWAY
            log.debug("hubble: HTTP/2 protocol error from %s: %s", self._peer, exc)
            self._close()
            return
        for event in events:
            try:
                self._event(event)
            except h2.exceptions.ProtocolError as exc:  # e.g. answering a stream that just closed
                log.debug("hubble: HTTP/2 error on %s: %s", self._peer, exc)
        self._write()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    # ----- events ------------------------------------------------------------------------------------
    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            call = self._calls.get(event.stream_id)
            if call is not None and call.task is None and not call.done:
                self._start(call)
        elif isinstance(event, h2.events.StreamReset):
            call = self._calls.pop(event.stream_id, None)
            if call is not None:
                self._abandon(call)
                self._idle_check()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._writable()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close()
        # PINGs are acknowledged by h2 itself; SETTINGS are too.

    def _data(self, event: h2.events.DataReceived) -> None:
        if event.flow_controlled_length:
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        call = self._calls.get(event.stream_id)
        if call is None or call.task is not None or call.done or call.handler is None:
            return
        call.request += event.data or b""
        if len(call.request) > MAX_RECEIVE_MESSAGE + PREFIX.size:
            self._trailers_only(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"grpc: received message larger than max ({len(call.request) - PREFIX.size} vs. "
                                f"{MAX_RECEIVE_MESSAGE})")

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self._draining:
            self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        fields: dict[bytes, bytes] = {}
        for name, value in headers:
            fields.setdefault(bytes(name), bytes(value))
        content_type = fields.get(b"content-type", b"")
        grpc_type = content_type == b"application/grpc" or content_type.startswith((b"application/grpc+",
                                                                                     b"application/grpc;"))
        call = _Call(stream_id, content_type if grpc_type else b"application/grpc", headers)
        self._calls[stream_id] = call
        self.idle.clear()
        if fields.get(b":method") != b"POST":
            self._trailers_only(call, grpc.StatusCode.INTERNAL, "only POST is supported", http_status=b"405")
            return
        if not grpc_type:
            self._trailers_only(call, grpc.StatusCode.INTERNAL,
                                f"transport: received unexpected content-type {content_type.decode('latin-1')!r}",
                                http_status=b"415")
            return
        encoding = fields.get(b"grpc-encoding", b"identity")
        if encoding != b"identity":
            self._trailers_only(call, grpc.StatusCode.UNIMPLEMENTED,
                                f'grpc: Decompressor is not installed for grpc-encoding "{encoding.decode("latin-1")}"')
            return
        timeout = fields.get(b"grpc-timeout")
        if timeout is not None:
            try:
                seconds = parse_timeout(timeout)
            except ValueError as exc:
                self._trailers_only(call, grpc.StatusCode.INTERNAL, f"transport: {exc}")
                return
            assert self._loop is not None
            call.deadline = self._loop.time() + seconds
            call.timer = self._loop.call_later(seconds, self._deadline, call)
        path = fields.get(b":path", b"").decode("latin-1")
        handler = self._methods.lookup(path)
        if handler is None:
            self._trailers_only(call, grpc.StatusCode.UNIMPLEMENTED, self._methods.unknown(path))
            return
        if handler.request_streaming:
            self._trailers_only(call, grpc.StatusCode.UNIMPLEMENTED, f"client streaming is not served: {path}")
            return
        call.handler = handler

    def _start(self, call: _Call) -> None:
        """The request is complete: one message, uncompressed; its handler starts."""
        body = call.request
        if call.handler is None:
            return
        if len(body) < PREFIX.size:
            self._trailers_only(call, grpc.StatusCode.INTERNAL, "grpc: the request has no message")
            return
        compressed, length = PREFIX.unpack_from(body)
        if compressed:
            self._trailers_only(call, grpc.StatusCode.INTERNAL,
                                "grpc: compressed flag set with identity or empty encoding")
            return
        if len(body) != PREFIX.size + length:
            self._trailers_only(call, grpc.StatusCode.INTERNAL,
                                "grpc: a unary request must be one whole message")
            return
        try:
            request = call.handler.request_deserializer(bytes(body[PREFIX.size:])) \
                if call.handler.request_deserializer else bytes(body[PREFIX.size:])
        except Exception as exc:  # a message that does not parse: the client's error, not ours
            self._trailers_only(call, grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {exc}")
            return
        call.request = bytearray()
        assert self._loop is not None
        call.task = self._loop.create_task(self._run(call, request))

    # ----- a call --------------------------------------------------------------------------------------
    async def _run(self, call: _Call, request: Any) -> None:
        handler = call.handler
        serialize: Callable[[Any], bytes] = handler.response_serializer or _as_is

        async def write(message: Any) -> None:
            self._message(call, serialize(message))
            if len(call.out) > HIGH_WATER:
                await self._drain(call)

        assert self._loop is not None
        deadline = None if call.deadline is None else time.monotonic() + call.deadline - self._loop.time()
        context = CallContext(call.headers, deadline, self._peer, write)
        code, details = _OK, ""
        try:
            if handler.response_streaming:
                result = handler.unary_stream(request, context)
                if getattr(handler, "batched", False):
                    try:
                        await self._batches(call, result)
                    finally:
                        await result.aclose()
                elif inspect.isasyncgen(result):
                    try:
                        # _message's append inlined: this loop runs once per flow (the relay's GetFlows)
                        out, pack = call.out, PREFIX.pack
                        async for message in result:
                            data = serialize(message)
                            if not call.headers_sent:
                                self._message(call, data)
                                continue
                            out += pack(0, len(data))
                            out += data
                            self._pace(call)
                            if len(out) > HIGH_WATER:
                                await self._drain(call)
                    finally:
                        await result.aclose()
                elif inspect.isawaitable(result):
                    await result  # writes through context.write
                elif result is not None:
                    for message in result:
                        await write(message)
            else:
                reply = handler.unary_unary(request, context)
                if inspect.isawaitable(reply):
                    reply = await reply
                self._message(call, serialize(reply))
            if context.code is not None:
                code, details = context.code, context.details
        except RpcStatus as status:
            code, details = status.code, status.details
        except asyncio.CancelledError:
            context.is_cancelled = True
            if call.done or self._closed:
                return  # reset by the client, or ended by shutdown: nothing more to send
            if not call.deadline_hit:
                raise
            code, details = grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
        except Exception as exc:
            log.exception("hubble: %s failed", handler)
            code, details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}"
        if call.done or self._closed:
            return
        try:
            if call.headers_sent:
                while call.out and not call.done and not self._closed:
                    self._flush(call)
                    if call.out:
                        await self._wait_writable(call)
                if call.done or self._closed:
                    return
                self._conn.send_headers(call.id, _trailers(code, details), end_stream=True)
                self._ended(call)
                self._write()
            else:
                self._trailers_only(call, code, details)
        except asyncio.CancelledError:
            if call.done or self._closed:
                return
            if not call.deadline_hit:
                raise
            # the deadline passed while the last responses waited for the client's window
            call.out.clear()
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._conn.send_headers(call.id, _trailers(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
                                        end_stream=True)
            self._ended(call)
            self._write()
        except h2.exceptions.ProtocolError:
            self._ended(call)

    async def _batches(self, call: _Call, batches: Any) -> None:
        """A batched handler's lists of serialized responses, each framed at once."""
        out, pack = call.out, PREFIX.pack
        async for batch in batches:
            if not batch:
                continue
            if not call.headers_sent:
                self._message(call, batch[0])
                batch = batch[1:]
            for data in batch:
                out += pack(0, len(data))
                out += data
            self._pace(call)
            if len(out) > HIGH_WATER:
                await self._drain(call)

    def _message(self, call: _Call, data: bytes) -> None:
        """One response, prefixed, into the call's buffer (sent when big enough or when the task waits)."""
        if not call.headers_sent:
            self._conn.send_headers(call.id, [(b":status", b"200"), (b"content-type", call.content_type)])
            call.headers_sent = True
        out = call.out
        out += PREFIX.pack(0, len(data))
        out += data
        self._pace(call)

    def _pace(self, call: _Call) -> None:
        """The call's buffer grew: out now once FLUSH_BYTES big (unless its window is shut), else on the
        loop's next turn."""
        if len(call.out) >= FLUSH_BYTES:
            if not call.blocked:
                self._flush(call)
        elif not call.flush_scheduled:
            call.flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._scheduled_flush, call)

    def _scheduled_flush(self, call: _Call) -> None:
        call.flush_scheduled = False
        if not call.done:
            self._flush(call)

    def _flush(self, call: _Call) -> None:
        """As much of the call's buffer as the windows allow, in frames of the peer's maximum size."""
        out = call.out
        if out and not self._paused and not self._closed:
            conn = self._conn
            size = conn.max_outbound_frame_size
            total, sent = len(out), 0
            with memoryview(out) as view:
                try:
                    while sent < total:
                        window = conn.local_flow_control_window(call.id)
                        if window <= 0:
                            break
                        chunk = min(total - sent, window, size)
                        conn.send_data(call.id, view[sent:sent + chunk])
                        sent += chunk
                except h2.exceptions.ProtocolError:  # the stream closed under us
                    sent = total
            del out[:sent]
        call.blocked = bool(out)  # until a window opens (_writable): no point trying per message
        self._write()

    async def _drain(self, call: _Call) -> None:
        while len(call.out) > HIGH_WATER and not call.done:
            self._flush(call)
            if len(call.out) > HIGH_WATER:
                await self._wait_writable(call)

    async def _wait_writable(self, call: _Call) -> None:
        assert self._loop is not None
        call.waiter = self._loop.create_future()
        try:
            await call.waiter
        finally:
            call.waiter = None

    def _writable(self) -> None:
        """A window opened or the transport drained: every call with something buffered sends it."""
        for call in list(self._calls.values()):
            if call.out and not call.waiter:
                self._flush(call)
            if call.waiter is not None and not call.waiter.done():
                call.waiter.set_result(None)
        self._write()

    def _deadline(self, call: _Call) -> None:
        call.deadline_hit = True
        if call.task is not None:
            call.task.cancel()
        elif not call.done:
            self._trailers_only(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._write()

    def _trailers_only(self, call: _Call, code: grpc.StatusCode, details: str, http_status: bytes = b"200") -> None:
        if call.done or self._closed:
            return
        headers = [(b":status", http_status), (b"content-type", call.content_type)]
        if code == grpc.StatusCode.UNIMPLEMENTED:
            headers.append((b"grpc-accept-encoding", b"identity"))
        with contextlib.suppress(h2.exceptions.ProtocolError):  # the stream has just closed
            self._conn.send_headers(call.id, headers + _trailers(code, details), end_stream=True)
        self._ended(call)
        self._write()

    def _ended(self, call: _Call) -> None:
        call.done = True
        call.out.clear()
        if call.timer is not None:
            call.timer.cancel()
        self._calls.pop(call.id, None)
        self._idle_check()

    def _abandon(self, call: _Call) -> None:
        """The stream is gone (reset, connection lost): the handler stops, nothing more is sent."""
        call.done = True
        call.out.clear()
        if call.timer is not None:
            call.timer.cancel()
        if call.task is not None:
            call.task.cancel()

    def _idle_check(self) -> None:
        if not self._calls:
            self.idle.set()

    # ----- connection --------------------------------------------------------------------------------
    def _write(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._closed:
            self._transport.write(data)

    def _close(self) -> None:
        self._write()
        if self._transport is not None:
            self._transport.close()

    def goaway(self) -> None:
        """The first step of shutdown: no new calls (GOAWAY with the last stream accepted; h2 is not
        told, it would refuse to send anything after it), calls in flight go on."""
        if self._closed or self._draining:
            return
        self._draining = True
        self._write()
        frame = GoAwayFrame(0, last_stream_id=self._conn.highest_inbound_stream_id, error_code=0)
        if self._transport is not None:
            self._transport.write(frame.serialize())

    def shutdown(self) -> list[asyncio.Task[None]]:
        """Ends the calls still running (UNAVAILABLE) and the connection; the handler tasks to await."""
        tasks = []
        for call in list(self._calls.values()):
            if call.task is not None:
                tasks.append(call.task)
            if call.headers_sent:
                call.out.clear()
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self._conn.send_headers(call.id, _trailers(grpc.StatusCode.UNAVAILABLE, "server shutting down"),
                                            end_stream=True)
                self._ended(call)
            else:
                self._trailers_only(call, grpc.StatusCode.UNAVAILABLE, "server shutting down")
            if call.task is not None:
                call.task.cancel()
        if not self._closed:
            self._conn.close_connection(0)
            self._close()
        return tasks


def _trailers(code: grpc.StatusCode, details: str) -> list[tuple[bytes, bytes]]:
    trailers = [(b"grpc-status", str(status_number(code)).encode())]
    if details:
        trailers.append((b"grpc-message", percent_encode(details)))
    return trailers


def _as_is(message: Any) -> bytes:
    return bytes(message)
