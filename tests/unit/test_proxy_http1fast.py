"""cilia-proxy's HTTP/1.1 fast path (cilia.proxy.http1fast) on loopback: a real client socket, the
fast path's protocols on uvloop's loop and on asyncio's own, and a scripted origin server.
Keep-alive, pipelining with a denied request in the middle, chunked bodies both ways, HEAD,
204 / 304, bytes split at every offset, back-pressure, the access records, and the hand-over of
what the fast path does not take to the h11 / h2 paths (which answer as they always did)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import pytest
import uvloop

from cilia.proxy.h2proxy import PREFACE, serve_h2
from cilia.proxy.http import ConnInfo, serve_connection
from cilia.proxy.http1fast import DENIED, DENIED_CLOSE, ClientLeg, Route
from cilia.proxy.httpserver import read_preface
from cilia.proxy.policy import Judgement, Request

LEGS: list[ClientLeg] = []  # the client legs made, newest last
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
LOOPS = [pytest.param(uvloop.new_event_loop, id="uvloop"), pytest.param(asyncio.new_event_loop, id="asyncio")]


def get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: origin\r\n" + extra + b"\r\n"


def judge(request: Request) -> Judgement:
    allowed = not request.path.startswith("/deny")
    mismatches = (("X-Env", "prod", "REPLACE"),) if request.path == "/rewrite" else ()
    return Judgement("FORWARDED" if allowed else "DROPPED", (), 7, True, mismatches)


@dataclass
class Observed:
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    responses: list[tuple[str, int]] = field(default_factory=list)

    def request(self, request: Request, judgement: Judgement) -> None:
        self.requests.append((request.method, request.path, judgement.verdict))

    def response(self, request: Request, judgement: Judgement, code: int, latency_ns: int) -> None:
        assert latency_ns > 0
        self.responses.append((request.path, code))


@dataclass
class Origin:
    """Answers each request (framed by h11) with `answer(h11 request)`, written `split` bytes at a time."""

    answer: Callable[[h11.Request], bytes] = lambda _r: OK
    split: int = 0
    received: bytearray = field(default_factory=bytearray)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    self.received += data
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    request = event
                elif isinstance(event, h11.EndOfMessage):
                    raw = self.answer(request)
                    step = self.split or len(raw) or 1
                    for i in range(0, len(raw), step):
                        writer.write(raw[i:i + step])
                        await writer.drain()
                        if self.split:
                            await asyncio.sleep(0)
                    if b"connection: close" in raw.lower():
                        return
                    # the origin speaks raw bytes: h11's own state is reset by hand
                    rest = bytes(conn.trailing_data[0])
                    conn = h11.Connection(h11.SERVER)
                    if rest:  # (b"" would tell h11 the connection closed)
                        conn.receive_data(rest)
                elif isinstance(event, h11.ConnectionClosed):
                    return
        except (h11.RemoteProtocolError, ConnectionError):
            return
        finally:
            writer.close()


async def _proxy(origin: Origin, observed: Observed, timeout: float = 2.0, origin_port: int = 0,
                 fast: bool = True) -> tuple[asyncio.AbstractServer, asyncio.AbstractServer, list[str]]:
    loop = asyncio.get_running_loop()
    origin_server = await asyncio.start_server(origin.serve, "127.0.0.1", 0)
    origin_port = origin_port or origin_server.sockets[0].getsockname()[1]
    handed: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    info = ConnInfo(judge, observed)

    async def connect() -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", origin_port))
        return sock

    async def open_upstream() -> Any:
        return await asyncio.open_connection(sock=await connect())

    async def fallback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, at_start: bool) -> None:
        handed.append("start" if at_start else "request")
        initial = await read_preface(reader) if at_start else b""
        if initial.startswith(PREFACE):
            await serve_h2(reader, writer, info, open_upstream, initial)
        else:
            await serve_connection(reader, writer, info, open_upstream, initial=initial, idle_timeout=2)

    route = Route(info, connect, fallback, fast=fast)

    def leg() -> ClientLeg:
        made = ClientLeg(lambda _t: route, tasks, idle_timeout=timeout, upstream_timeout=timeout)
        LEGS.append(made)
        return made

    proxy = await loop.create_server(leg, "127.0.0.1", 0)
    return proxy, origin_server, handed


def exchange(loop_factory: Callable[[], asyncio.AbstractEventLoop], parts: list[bytes], origin: Origin | None = None,
             close_after: bool = True, pause: float = 0.0, fast: bool = True) -> tuple[bytes, Origin, Observed,
                                                                                        list[str]]:
    """Sends `parts` (one send each) on one client connection; returns all the client got."""
    origin = origin or Origin()
    observed = Observed()

    async def go() -> tuple[bytes, list[str]]:
        proxy, origin_server, handed = await _proxy(origin, observed, fast=fast)
        port = proxy.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = bytearray()
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if close_after:
            writer.write_eof()
        async with asyncio.timeout(5):
            while data := await reader.read(65536):
                got += data
        writer.close()
        proxy.close()
        origin_server.close()
        return bytes(got), handed

    loop = loop_factory()
    try:
        got, handed = loop.run_until_complete(go())
    finally:
        loop.close()
    return got, origin, observed, handed


def answers(got: bytes) -> list[tuple[int, bytes]]:
    """The client's view: (status, body) per answer, framed by h11."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(got)
    out: list[tuple[int, bytes]] = []
    body = b""
    status = 0
    ended = False
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return out
        if event is h11.NEED_DATA and not ended:
            conn.receive_data(b"")
            ended = True
        elif isinstance(event, h11.Response):
            status, body = event.status_code, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append((status, body))
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return out
            conn.start_next_cycle()
            conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        else:
            return out


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_keepalive_requests_go_on_one_upstream_connection_unchanged(loop_factory: Any) -> None:
    reqs = [get("/a"), get("/b", b"X-Case: Kept \r\n"),
            b"POST /c HTTP/1.1\r\nhost: origin\r\ncontent-length: 5\r\n\r\nhello"]
    got, origin, observed, handed = exchange(loop_factory, reqs, pause=0.05)
    assert answers(got) == [(200, b"ok")] * 3
    assert bytes(origin.received) == b"".join(reqs)  # byte for byte, header case and spacing as sent
    assert origin.connections == 1 and handed == []
    assert observed.requests == [("GET", "/a", "FORWARDED"), ("GET", "/b", "FORWARDED"), ("POST", "/c", "FORWARDED")]
    assert observed.responses == [("/a", 200), ("/b", 200), ("/c", 200)]


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_pipeline_answered_in_order_with_the_denied_request_in_its_place(loop_factory: Any) -> None:
    got, origin, observed, handed = exchange(loop_factory, [get("/a") + get("/deny/x") + get("/b") + get("/deny/y")])
    assert got == OK + DENIED + OK + DENIED
    assert bytes(origin.received) == get("/a") + get("/b")  # the denied never reach the server
    assert [v for _m, _p, v in observed.requests] == ["FORWARDED", "DROPPED", "FORWARDED", "DROPPED"]
    assert observed.responses == [("/a", 200), ("/b", 200)] and handed == []


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_a_repeated_head_is_judged_and_framed_as_a_new_one(loop_factory: Any) -> None:
    """The last head is kept (a repeat is not parsed again): repeats with other bodies, one whose
    body is still coming, a longer head that starts as the kept one, chunked repeats (their ends
    differ), each framed and judged as its own."""
    post = b"POST /c HTTP/1.1\r\nHost: origin\r\nContent-Length: 5\r\n\r\n"
    longer = b"POST /c HTTP/1.1\r\nHost: origin\r\nContent-Length: 5\r\nX-More: 1\r\n\r\n"
    chunked = b"POST /u HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [post + b"hello", post + b"wor", b"ld" + get("/deny") + get("/deny") + longer + b"again" + get("/a")
             + get("/a") + chunked + b"a\r\n0123456789\r\n0\r\n\r\n" + chunked + b"0\r\n\r\n" + get("/z")]
    got, origin, observed, handed = exchange(loop_factory, parts, pause=0.05)
    assert got == OK * 2 + DENIED * 2 + OK * 6 and handed == []
    assert bytes(origin.received) == b"".join(parts).replace(get("/deny"), b"")
    assert observed.requests == [("POST", "/c", "FORWARDED")] * 2 + [("GET", "/deny", "DROPPED")] * 2 + [
        ("POST", "/c", "FORWARDED"), ("GET", "/a", "FORWARDED"), ("GET", "/a", "FORWARDED"),
        ("POST", "/u", "FORWARDED"), ("POST", "/u", "FORWARDED"), ("GET", "/z", "FORWARDED")]


def test_the_403s_are_the_h11_paths_bytes() -> None:
    assert DENIED == (b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 13\r\n\r\n"
                      b"Access denied")
    assert DENIED_CLOSE.endswith(b"Connection: close\r\n\r\nAccess denied")


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_denied_with_connection_close_ends_the_connection(loop_factory: Any) -> None:
    got, origin, _observed, _handed = exchange(loop_factory, [get("/deny", b"Connection: close\r\n") + get("/a")],
                                               close_after=False)
    assert got == DENIED_CLOSE and origin.received == b""


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n1\r\nd\r\n0\r\nX-Trailer: t\r\n\r\n"


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_chunked_both_ways_pass_unchanged(loop_factory: Any) -> None:
    upload = (b"POST /up HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n")
    got, origin, observed, handed = exchange(loop_factory, [upload, get("/a")],
                                             Origin(lambda r: CHUNKED if r.target == b"/up" else OK), pause=0.05)
    assert got == CHUNKED + OK  # chunk sizes, extensions and trailers as the server sent them
    assert bytes(origin.received) == upload + get("/a") and handed == []
    assert observed.responses == [("/up", 200), ("/a", 200)]


def _by_method(r: h11.Request) -> bytes:
    if r.method == b"HEAD":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  # the length a GET would have, no body
    if r.target == b"/204":
        return b"HTTP/1.1 204 No Content\r\n\r\n"
    if r.target == b"/304":
        return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n"
    if r.target == b"/100":
        return b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK
    return OK


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_head_204_304_and_1xx_answers_have_no_body_and_the_next_request_follows(loop_factory: Any) -> None:
    pipeline = (b"HEAD / HTTP/1.1\r\nHost: origin\r\n\r\n" + get("/204") + get("/304") + get("/100") + get("/a"))
    got, _origin, observed, handed = exchange(loop_factory, [pipeline], Origin(_by_method))
    assert got == b"".join(_by_method(h11.Request(method=m, target=t, headers=[("Host", "x")])) for m, t in (
        (b"HEAD", b"/"), (b"GET", b"/204"), (b"GET", b"/304"), (b"GET", b"/100"), (b"GET", b"/a")))
    assert [code for _p, code in observed.responses] == [200, 204, 304, 200, 200] and handed == []


@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_bytes_split_everywhere_both_ways(split: int) -> None:
    upload = b"POST /up HTTP/1.1\r\nHost: origin\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    pipeline = get("/a") + get("/deny") + upload + b"HEAD /h HTTP/1.1\r\nHost: o\r\n\r\n" + get("/b")
    parts = [pipeline[i:i + split] for i in range(0, len(pipeline), split)]
    origin = Origin(lambda r: CHUNKED if r.target == b"/up" else _by_method(r), split=split)
    got, origin, observed, handed = exchange(uvloop.new_event_loop, parts, origin, pause=0.0005)
    assert got == OK + DENIED + CHUNKED + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + OK
    assert bytes(origin.received) == get("/a") + upload + b"HEAD /h HTTP/1.1\r\nHost: o\r\n\r\n" + get("/b")
    assert handed == [] and len(observed.responses) == 4


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_header_rewrite_only_when_a_mismatch_action_asks(loop_factory: Any) -> None:
    got, origin, _observed, _handed = exchange(loop_factory, [get("/rewrite", b"X-Env: dev\r\n") + get("/a")])
    assert answers(got) == [(200, b"ok")] * 2
    assert bytes(origin.received) == (b"GET /rewrite HTTP/1.1\r\nHost: origin\r\nX-Env: prod\r\n\r\n" + get("/a"))


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_close_delimited_answer_and_server_close_end_the_client_connection(loop_factory: Any) -> None:
    old = b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    got, _origin, observed, _handed = exchange(
        loop_factory, [get("/a") + get("/b")], Origin(lambda _r: old + b"\r\nconnection: close\r\n"), close_after=False)
    assert got.startswith(old) and observed.responses == [("/a", 200)]


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_garbage_from_the_server_closes_without_passing_it_on(loop_factory: Any) -> None:
    got, _origin, observed, _handed = exchange(loop_factory, [get("/a")], Origin(lambda _r: b"garbage\r\n\r\n"))
    assert got == b"" and observed.responses == []


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET / HTTP/1.0\r\n\r\n", None),  # HTTP/1.0: h11's ("I only send HTTP/1.1": closed)
    (b"NOT A REQUEST\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 999999999\r\n\r\n" + b"x" * 100, None),  # cut: closed
])
def test_what_the_fast_path_does_not_take_the_h11_path_answers(raw: bytes, status: int | None) -> None:
    got, origin, _observed, handed = exchange(uvloop.new_event_loop, [get("/a") + raw])
    assert got.startswith(OK) and handed == ["request"]
    if status is None:
        assert got == OK
    else:
        assert got[len(OK):].startswith(b"HTTP/1.1 %d " % status)
    assert bytes(origin.received) == get("/a")


def test_upgrade_and_expect_go_to_h11_from_that_request() -> None:
    upgrade = get("/ws", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    got, _origin, observed, handed = exchange(uvloop.new_event_loop, [get("/a"), upgrade], pause=0.05)
    assert handed == ["request"] and answers(got)[0] == (200, b"ok")
    assert observed.requests[1][1] == "/ws"  # judged by the h11 path, as before


def test_h2_preface_goes_to_the_h2_path() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "GET"), (":path", "/deny/h2"), (":scheme", "http"), (":authority", "o")],
                        end_stream=True)
    raw = client.data_to_send()
    got, _origin, observed, handed = exchange(uvloop.new_event_loop, [raw[:5], raw[5:]], pause=0.05)
    assert handed == ["start"] and observed.requests == [("GET", "/deny/h2", "DROPPED")]
    events = client.receive_data(got)
    assert any(isinstance(e, h2.events.ResponseReceived) and (b":status", b"403") in e.headers for e in events)


def test_cut_mid_request_gets_the_h11_answer() -> None:
    got, _origin, _observed, handed = exchange(uvloop.new_event_loop, [get("/a") + b"GET /b HTTP/1.1\r\nHo"])
    assert handed == ["request"] and got.startswith(OK) and b"400 Bad Request" in got[len(OK):]


def test_a_client_that_does_not_read_pauses_the_server() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (8 * 1024 * 1024) + b"x" * (8 * 1024 * 1024)
    origin = Origin(lambda _r: big)
    observed = Observed()

    async def go() -> tuple[int, int]:
        proxy, origin_server, _handed = await _proxy(origin, observed)
        port = proxy.sockets[0].getsockname()[1]
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(get("/big"))
        await asyncio.sleep(0.5)  # nothing read meanwhile: the proxy buffers a bounded amount, not 8 MiB
        buffered = LEGS[-1].transport.get_write_buffer_size()
        sock.setblocking(False)
        total = 0
        async with asyncio.timeout(10):
            while total < len(big):
                data = await asyncio.get_running_loop().sock_recv(sock, 1 << 20)
                if not data:
                    break
                total += len(data)
        sock.close()
        proxy.close()
        origin_server.close()
        return buffered, total

    loop = uvloop.new_event_loop()
    try:
        buffered, total = loop.run_until_complete(go())
    finally:
        loop.close()
    assert total == len(big) and observed.responses == [("/big", 200)]
    assert buffered < 4 * 1024 * 1024



def _silence(parts: list[bytes], origin: Origin, timeout: float, origin_port: int = 0) -> tuple[bytes, float]:
    """Sends `parts` and then nothing; (what came back, seconds until the proxy closed)."""
    observed = Observed()

    async def go() -> tuple[bytes, float]:
        proxy, origin_server, _handed = await _proxy(origin, observed, timeout, origin_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
        for part in parts:
            writer.write(part)
        start = asyncio.get_running_loop().time()
        got = bytearray()
        async with asyncio.timeout(10):
            while data := await reader.read(65536):
                got += data
        elapsed = asyncio.get_running_loop().time() - start
        writer.close()
        proxy.close()
        origin_server.close()
        return bytes(got), elapsed

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(go())
    finally:
        loop.close()


@pytest.mark.parametrize("parts", [[b""], [get("/a")], [get("/a") + b"GET /b HTTP/1.1\r\nHo"]])
def test_a_silent_client_is_closed_after_the_idle_timeout(parts: list[bytes]) -> None:
    got, elapsed = _silence(parts, Origin(), 0.4)
    assert 0.3 < elapsed < 3 and got in (b"", OK)


def test_a_silent_server_is_left_after_the_upstream_timeout() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):  # never answers; ends when the proxy lets go
            pass
        writer.close()

    origin = Origin()
    origin.serve = never  # type: ignore[method-assign]
    got, elapsed = _silence([get("/a")], origin, 0.4)
    assert got == b"" and 0.3 < elapsed < 3


def test_no_upstream_closes_the_client() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: connection refused
        got, elapsed = _silence([get("/a")], Origin(), 2, origin_port=port)
    assert got == b"" and elapsed < 2


def test_without_the_fast_path_every_connection_goes_to_the_streams_paths() -> None:
    got, origin, observed, handed = exchange(uvloop.new_event_loop, [get("/a") + get("/deny") + get("/b")], fast=False)
    assert handed == ["start"] and [s for s, _b in answers(got)] == [200, 403, 200]
    assert observed.responses == [("/a", 200), ("/b", 200)] and b"/deny" not in origin.received
