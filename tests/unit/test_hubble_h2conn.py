"""cilia's gRPC-over-HTTP/2 connection (cilia.hubble.h2conn) driven by an h2 client in memory:
responses packed into DATA frames and split at the peer's frame size, flow-control stalls and
WINDOW_UPDATE, cancel by RST_STREAM, grpc-timeout, trailers and trailers-only errors, the
refusals (unknown method, compression), PING, SETTINGS and GOAWAY; and a fuzz test feeding
arbitrary bytes and frames to the server side (any exception out of it is a bug)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cilia.hubble.grpcwire import MethodTable, RpcStatus, parse_timeout, percent_decode, percent_encode
from cilia.hubble.h2conn import INITIAL_WINDOW, GrpcConnection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out


class Probe:
    """What the test servicer's handlers saw."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()


def methods(probe: Probe) -> MethodTable:
    async def many(request: bytes, context: Any) -> AsyncIterator[bytes]:
        count, size = (int(x) for x in request.split(b","))
        for i in range(count):
            yield bytes([65 + i % 26]) * size

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def fail(request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad 100% \u00e9\n")
        raise AssertionError("abort returned")

    async def hang(request: bytes, context: Any) -> AsyncIterator[bytes]:
        probe.started.set()
        try:
            yield b"first"
            await asyncio.Event().wait()
        finally:
            probe.cancelled.set()

    handlers = {"Many": grpc.unary_stream_rpc_method_handler(many), "Echo": grpc.unary_unary_rpc_method_handler(echo),
                "Fail": grpc.unary_unary_rpc_method_handler(fail), "Hang": grpc.unary_stream_rpc_method_handler(hang)}
    table = MethodTable()
    table.add_registered_method_handlers("test.Svc", handlers)
    return table


class Pair:
    """A server GrpcConnection and an h2 client connection, bytes moved between them by pump()."""

    def __init__(self, probe: Probe, client_settings: dict[int, int] | None = None, acknowledge: bool = True) -> None:
        self.acknowledge = acknowledge  # as a client reading the data does (else windows only open by hand)
        self.server = GrpcConnection(methods(probe))
        self.transport = Transport()
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        if client_settings:
            self.client.local_settings = h2.settings.Settings(client=True, initial_values=client_settings)
        self.client.initiate_connection()
        self.server.connection_made(self.transport)
        self.events: list[h2.events.Event] = []
        self.frames: list[Frame] = []

    async def pump(self, rounds: int = 20) -> list[h2.events.Event]:
        """Moves bytes both ways (letting the loop run the handlers) until nothing moves."""
        new: list[h2.events.Event] = []
        for _ in range(rounds):
            to_server = self.client.data_to_send()
            if to_server:
                self.server.data_received(to_server)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            to_client = self.transport.take()
            if to_client:
                self.frames.extend(parse_frames(to_client))
                received = self.client.receive_data(to_client)
                new.extend(received)
                for event in received:
                    if self.acknowledge and isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                        self.client.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if not to_server and not to_client:
                break
        self.events.extend(new)
        return new

    def call(self, method: str, body: bytes, extra: list[tuple[bytes, bytes]] | None = None,
             flag: int = 0) -> int:
        stream = self.client.get_next_available_stream_id()
        self.client.send_headers(stream, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", method.encode()),
                                          (b":authority", b"x"), (b"content-type", b"application/grpc"),
                                          (b"te", b"trailers"), *(extra or [])])
        self.client.send_data(stream, bytes([flag]) + len(body).to_bytes(4, "big") + body, end_stream=True)
        return stream


def parse_frames(data: bytes) -> list[Frame]:
    frames, offset = [], 0
    if data.startswith(PREFACE):
        offset = len(PREFACE)
    while offset + 9 <= len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[offset:offset + 9]))
        frame.parse_body(memoryview(data[offset + 9:offset + 9 + length]))
        frames.append(frame)
        offset += 9 + length
    return frames


def messages(body: bytes) -> list[bytes]:
    out, offset = [], 0
    while offset < len(body):
        assert body[offset] == 0
        length = int.from_bytes(body[offset + 1:offset + 5], "big")
        out.append(body[offset + 5:offset + 5 + length])
        offset += 5 + length
    assert offset == len(body)
    return out


def body_of(events: list[h2.events.Event], stream: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream)


def headers_of(events: list[h2.events.Event], stream: int, kind: type) -> dict[bytes, bytes]:
    [found] = [e for e in events if isinstance(e, kind) and e.stream_id == stream]
    return dict(found.headers)


def run(test: Callable[[], Any]) -> None:
    asyncio.run(test())


def test_responses_share_frames_and_split_at_the_frame_size() -> None:
    async def main() -> None:
        pair = Pair(Probe())
        await pair.pump()
        small = pair.call("/test.Svc/Many", b"200,100")
        big = pair.call("/test.Svc/Many", b"3,40000")
        events = await pair.pump(200)
        headers = headers_of(events, small, h2.events.ResponseReceived)
        assert headers[b":status"] == b"200" and headers[b"content-type"] == b"application/grpc"
        assert messages(body_of(events, small)) == [bytes([65 + i % 26]) * 100 for i in range(200)]
        small_frames = [f for f in pair.frames if isinstance(f, DataFrame) and f.stream_id == small]
        assert len(small_frames) <= 2  # 200 messages (21 KB), as few frames as 16 KB frames allow
        assert messages(body_of(events, big)) == [bytes([65 + i]) * 40000 for i in range(3)]
        assert max(len(f.data) for f in pair.frames if isinstance(f, DataFrame)) <= 16384  # the peer's max
        for stream in (small, big):
            assert headers_of(events, stream, h2.events.TrailersReceived) == {b"grpc-status": b"0"}
            assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in events)
    run(main)


def test_a_stall_on_the_window_and_window_updates() -> None:
    async def main() -> None:
        pair = Pair(Probe(), {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}, acknowledge=False)
        await pair.pump()
        stream = pair.call("/test.Svc/Many", b"4,3000")
        events = await pair.pump()
        assert len(body_of(events, stream)) == 1000  # all the window allows
        assert not any(isinstance(e, h2.events.TrailersReceived) for e in events)
        pair.client.increment_flow_control_window(5000, stream)
        events += await pair.pump()
        assert len(body_of(events, stream)) == 6000
        pair.client.increment_flow_control_window(100000, stream)
        pair.client.increment_flow_control_window(100000)
        events += await pair.pump()
        assert messages(body_of(events, stream)) == [bytes([65 + i]) * 3000 for i in range(4)]
        assert headers_of(events, stream, h2.events.TrailersReceived) == {b"grpc-status": b"0"}
    run(main)


def test_rst_stream_cancels_the_handler() -> None:
    async def main() -> None:
        probe = Probe()
        pair = Pair(probe)
        await pair.pump()
        stream = pair.call("/test.Svc/Hang", b"")
        events = await pair.pump()
        assert messages(body_of(events, stream)) == [b"first"] and not probe.cancelled.is_set()
        pair.client.reset_stream(stream, 8)
        await pair.pump()
        await asyncio.wait_for(probe.cancelled.wait(), 2)
        other = pair.call("/test.Svc/Echo", b"still here")  # the connection goes on
        events = await pair.pump()
        assert messages(body_of(events, other)) == [b"still here"]
    run(main)


def test_grpc_timeout_ends_the_call_deadline_exceeded() -> None:
    async def main() -> None:
        probe = Probe()
        pair = Pair(probe)
        await pair.pump()
        stream = pair.call("/test.Svc/Hang", b"", [(b"grpc-timeout", b"50m")])
        await pair.pump()
        await asyncio.wait_for(probe.cancelled.wait(), 2)
        events = await pair.pump()
        assert headers_of(pair.events, stream, h2.events.TrailersReceived)[b"grpc-status"] == b"4"
        assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in events)
    run(main)


def test_the_deadline_passes_while_waiting_for_the_window() -> None:
    async def main() -> None:
        pair = Pair(Probe(), {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}, acknowledge=False)
        await pair.pump()
        stream = pair.call("/test.Svc/Many", b"4,3000", [(b"grpc-timeout", b"50m")])
        events = await pair.pump()
        assert len(body_of(events, stream)) == 1000 and not pair.server._calls[stream].done
        await asyncio.sleep(0.1)
        events += await pair.pump()
        assert headers_of(events, stream, h2.events.TrailersReceived)[b"grpc-status"] == b"4"
        assert not pair.server._calls  # ended, nothing left buffered
    run(main)


def test_errors_are_trailers_only() -> None:
    async def main() -> None:
        pair = Pair(Probe())
        await pair.pump()
        checks = [
            (pair.call("/test.Svc/Fail", b""), b"3", "bad 100% \u00e9\n"),
            (pair.call("/test.Svc/Nope", b""), b"12", "unknown method Nope for service test.Svc"),
            (pair.call("/other.Svc/Echo", b""), b"12", "unknown service other.Svc"),
            (pair.call("/test.Svc/Echo", b"x", [(b"grpc-encoding", b"gzip")]), b"12",
             'grpc: Decompressor is not installed for grpc-encoding "gzip"'),
            (pair.call("/test.Svc/Echo", b"x", flag=1), b"13",
             "grpc: compressed flag set with identity or empty encoding"),
            (pair.call("/test.Svc/Echo", b"x", [(b"grpc-timeout", b"1x")]), b"13",
             "transport: malformed grpc-timeout: b'1x'"),
        ]
        events = await pair.pump()
        for stream, code, message in checks:
            headers = headers_of(events, stream, h2.events.ResponseReceived)  # one HEADERS, with END_STREAM
            assert headers[b":status"] == b"200" and headers[b"grpc-status"] == code
            assert percent_decode(headers[b"grpc-message"]) == message
            assert not body_of(events, stream)
            assert not [e for e in events if isinstance(e, h2.events.TrailersReceived) and e.stream_id == stream]
        assert headers_of(events, checks[0][0], h2.events.ResponseReceived)[b"grpc-message"] == b"bad 100%25 %C3%A9%0A"
    run(main)


def test_settings_ping_and_goaway() -> None:
    async def main() -> None:
        probe = Probe()
        pair = Pair(probe)
        events = await pair.pump()
        [changed] = [e for e in events if isinstance(e, h2.events.RemoteSettingsChanged)]
        assert changed.changed_settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE].new_value == INITIAL_WINDOW
        assert pair.client.outbound_flow_control_window == INITIAL_WINDOW  # the connection's too
        pair.client.ping(b"12345678")
        events = await pair.pump()
        assert [e.ping_data for e in events if isinstance(e, h2.events.PingAckReceived)] == [b"12345678"]
        stream = pair.call("/test.Svc/Hang", b"")
        await pair.pump()
        pair.server.goaway()
        events = await pair.pump()
        [first] = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert (first.error_code, first.last_stream_id) == (0, stream)
        assert not probe.cancelled.is_set()  # calls in flight go on after the first GOAWAY
        tasks = pair.server.shutdown()
        await asyncio.wait(tasks, timeout=2)
        assert probe.cancelled.is_set() and pair.transport.closed
        frames = parse_frames(pair.transport.take())
        trailers = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == stream]
        assert trailers and "END_STREAM" in trailers[0].flags
        assert isinstance(frames[-1], GoAwayFrame)
    run(main)


def test_wire_helpers() -> None:
    assert parse_timeout(b"100m") == pytest.approx(0.1) and parse_timeout(b"2H") == 7200
    assert parse_timeout(b"12345678n") == pytest.approx(0.012345678)
    for bad in (b"", b"m", b"123456789m", b"10x", b"-1S", b"1.5S"):
        with pytest.raises(ValueError):
            parse_timeout(bad)
    assert percent_encode("plain text") == b"plain text"
    assert percent_encode("a%b\r\u00fc") == b"a%25b%0D%C3%BC"
    assert percent_decode(b"a%25b%0D%C3%BC") == "a%b\r\u00fc" and percent_decode(b"50%") == "50%"
    with pytest.raises(RpcStatus):
        raise RpcStatus(grpc.StatusCode.INTERNAL, "x")


# ----- fuzz ------------------------------------------------------------------------------------------
_HEADER_BLOCK = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True)).encoder.encode(
    [(":method", "POST"), (":scheme", "http"), (":path", "/test.Svc/Many"), (":authority", "x"),
     ("content-type", "application/grpc")])

_stream_ids = st.sampled_from([1, 3, 5, 2, 2**31 - 1])
_any_ids = st.sampled_from([0, 1, 3, 2, 2**31 - 1])


def _raw(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


_frames = st.one_of(
    st.builds(_raw, st.integers(0, 12), st.integers(0, 255), _any_ids, st.binary(max_size=40)),
    st.builds(lambda s, d, f: HeadersFrame(s, data=d, flags=f), _stream_ids,
              st.one_of(st.just(_HEADER_BLOCK), st.binary(max_size=64)),
              st.sets(st.sampled_from(["END_STREAM", "END_HEADERS"]))),
    st.builds(lambda s, d, f: DataFrame(s, data=d, flags=f), _stream_ids,
              st.one_of(st.just(b"\x00\x00\x00\x00\x0310,1"), st.binary(max_size=64)),
              st.sets(st.sampled_from(["END_STREAM"]))),
    st.builds(lambda s, c: RstStreamFrame(s, error_code=c), _stream_ids, st.integers(0, 20)),
    st.builds(lambda s, w: WindowUpdateFrame(s, window_increment=w), _any_ids, st.integers(0, 2**31 - 1)),
    st.builds(lambda v: SettingsFrame(0, settings=v), st.dictionaries(st.integers(1, 8), st.integers(0, 2**32 - 1),
                                                                       max_size=3)),
    st.builds(lambda d: PingFrame(0, opaque_data=d), st.binary(min_size=8, max_size=8)),
    st.builds(lambda s, n: GoAwayFrame(0, last_stream_id=s, error_code=n), _stream_ids, st.integers(0, 13)),
    st.builds(lambda s, d: ContinuationFrame(s, data=d), _stream_ids, st.binary(max_size=32)),
)


def _feed(chunks: list[bytes]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[Any] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        server = GrpcConnection(methods(Probe()))
        transport = Transport()
        server.connection_made(transport)
        for chunk in chunks:
            server.data_received(chunk)  # must not raise, whatever comes
            await asyncio.sleep(0)
        for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        server.connection_lost(None)
        assert not errors, errors
    asyncio.run(main())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), max_size=5), st.booleans())
def test_fuzz_arbitrary_bytes(chunks: list[bytes], preface: bool) -> None:
    _feed(([PREFACE] if preface else []) + chunks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frames, max_size=12), st.integers(1, 64))
def test_fuzz_frames(frames: list[Frame | bytes], split: int) -> None:
    data = PREFACE + SettingsFrame(0).serialize() + b"".join(f if isinstance(f, bytes) else f.serialize()
                                                             for f in frames)
    _feed([data[i:i + split * 7] for i in range(0, len(data), split * 7)])
