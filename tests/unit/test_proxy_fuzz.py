"""Fuzzing the proxy's parsing path (hypothesis) over in-memory streams: malformed request lines,
oversized heads and bodies, garbage bytes, cut connections, for HTTP/1.1 (serve_connection) and
HTTP/2 (serve_h2, garbage and mangled frames after the preface). Whatever comes in, the proxy
answers or closes within its timeouts, raises nothing, and no denied request reaches the server.
`EXAMPLES` counts the examples that ran (the figure for the notes: pytest -s prints it)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.memory_stream import MemoryWriter

from cilia.proxy.h2proxy import PREFACE, serve_h2
from cilia.proxy.http import ConnInfo, serve_connection
from cilia.proxy.policy import Judgement, Request

EXAMPLES: Counter[str] = Counter()


def _judge(request: Request) -> Judgement:
    allowed = request.method == "POST" and request.path == "/v1/request-landing"
    return Judgement("FORWARDED" if allowed else "DROPPED", (), 7, True)


def _run(raw: bytes, h2c: bool, answer: bytes) -> tuple[bytes, bytes]:
    async def go() -> tuple[bytes, bytes]:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        writer, up_writer = MemoryWriter(), MemoryWriter()

        async def open_upstream() -> Any:
            up_reader = asyncio.StreamReader()
            up_reader.feed_data(answer)
            up_reader.feed_eof()
            return up_reader, up_writer

        info = ConnInfo(_judge)
        if h2c:
            coro = serve_h2(reader, writer, info, open_upstream, b"", idle_timeout=1, upstream_timeout=1)  # type: ignore[arg-type]
        else:
            coro = serve_connection(reader, writer, info, open_upstream, idle_timeout=1,  # type: ignore[arg-type]
                                    upstream_timeout=1)
        await asyncio.wait_for(coro, 5)  # a hang fails the example
        assert writer.closed
        return bytes(writer.data), bytes(up_writer.data)

    return asyncio.run(go())


_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"", b"G\x00T", b"POST ", b"\xff\xfe", b"A" * 300])
_TARGETS = st.sampled_from([b"/v1/request-landing", b"/v1/exhaust-port", b"/", b"", b"/\r", b"*",
                            b"http://x/v1/request-landing", b"/" + b"a" * 20000, b"/%00", b"/\xff"])
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.", b"", b"http/1.1", b"HTTP/9.9"])
_HEADERS = st.lists(st.sampled_from([
    b"Host: d", b"Content-Length: 3", b"Content-Length: -1", b"Content-Length: 99999999999999999999",
    b"Content-Length: 1, 2", b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked", b"Bad Header",
    b": empty-name", b"X: " + b"y" * 20000, b"X-Folded: a\r\n b", b"Connection: close", b"Expect: 100-continue",
    b"X:\x00\x01", b"Host: a\r\nHost: b",
]), max_size=6)
_BODIES = st.one_of(st.just(b""), st.binary(max_size=64), st.just(b"3\r\nabc\r\n0\r\n\r\n"),
                    st.just(b"zz\r\n"), st.just(b"x" * 70000))
_REQUEST = st.builds(lambda m, t, v, hs, b: m + b" " + t + b" " + v + b"\r\n" + b"".join(h + b"\r\n" for h in hs)
                     + b"\r\n" + b, _METHODS, _TARGETS, _VERSIONS, _HEADERS, _BODIES)
_ANSWERS = st.sampled_from([
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" * 8, b"", b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n" * 8, b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
])


def _check_http1(got: bytes, upstream: bytes) -> None:
    for line in got.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            assert line[9:12].isdigit()
    for line in upstream.split(b"\r\n"):  # only the allowed request line is ever sent on
        if line.endswith((b" HTTP/1.1", b" HTTP/1.0")):
            assert line.startswith(b"POST /v1/request-landing ")


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(_REQUEST, st.binary(max_size=400)), min_size=1, max_size=4), _ANSWERS,
       st.integers(min_value=0, max_value=2000))
def test_http1_answers_or_closes_and_never_forwards_a_denied_request(parts: list[bytes], answer: bytes,
                                                                      cut: int) -> None:
    raw = b"".join(parts)
    raw = raw[: len(raw) - cut] if cut < len(raw) else raw  # a connection cut mid-request too
    EXAMPLES["http1"] += 1
    got, upstream = _run(raw, False, answer)
    _check_http1(got, upstream)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(min_value=16 * 1024, max_value=256 * 1024))
def test_oversized_heads_get_431_or_400_and_nothing_is_forwarded(size: int) -> None:
    EXAMPLES["http1-oversized"] += 1
    got, upstream = _run(b"POST /v1/request-landing HTTP/1.1\r\nX-Big: " + b"a" * size + b"\r\n\r\n", False, b"")
    assert got.startswith((b"HTTP/1.1 431 ", b"HTTP/1.1 400 ")) and upstream == b""


def _frames(requests: list[tuple[str, str, bool]]) -> bytes:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for i, (method, path, end) in enumerate(requests):
        sid = 1 + 2 * i
        conn.send_headers(sid, [(":method", method), (":path", path), (":scheme", "http"), (":authority", "d")],
                          end_stream=end)
        if not end:
            conn.send_data(sid, b"body", end_stream=True)
    return conn.data_to_send()


_H2_REQUESTS = st.lists(st.tuples(st.sampled_from(["GET", "POST", "PUT"]),
                                  st.sampled_from(["/v1/request-landing", "/v1/exhaust-port", "/x"]), st.booleans()),
                        min_size=1, max_size=5)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_H2_REQUESTS, st.binary(max_size=200), st.integers(min_value=0, max_value=400),
       st.lists(st.tuples(st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=255)),
                max_size=4))
def test_h2_garbage_and_mangled_frames_are_answered_or_closed(requests: list[tuple[str, str, bool]], garbage: bytes,
                                                             cut: int, flips: list[tuple[int, int]]) -> None:
    EXAMPLES["h2"] += 1
    frames = bytearray(_frames(requests)[len(PREFACE):])
    for at, value in flips:  # mangle a byte here and there: lengths, types, flags, stream ids, HPACK
        if frames:
            frames[at % len(frames)] = value
    raw = PREFACE + bytes(frames[: max(0, len(frames) - cut)]) + garbage
    _run(raw, True, b"")  # the upstream is a server that closes at once: only its absence is exercised here


def test_h2_denied_streams_never_reach_the_server() -> None:
    EXAMPLES["h2"] += 1
    raw = _frames([("PUT", "/v1/exhaust-port", True), ("GET", "/x", False)])
    got, upstream = _run(raw, True, b"")
    assert upstream == b""  # no allowed stream: no upstream connection at all
    assert b"Access denied" in got


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nproxy fuzz examples run: {dict(EXAMPLES)} (total {sum(EXAMPLES.values())})")
