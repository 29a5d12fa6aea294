"""Fuzzing the HTTP/1.1 fast path's connection handling (cilia.proxy.http1fast) with hypothesis,
on loopback: the request streams of the h11 path's fuzz test (tests/unit/test_proxy_fuzz.py:
malformed request lines, oversized heads and bodies, garbage, cut connections) sent in random
pieces through the fast path (and what it hands to h11), against a server that answers with
canned, sometimes broken, bytes. Whatever comes in: no callback raises, the connection is answered
or closed within its timeouts, and no denied request reaches the server. `EXAMPLES` counts the
examples run (pytest -s prints it)."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.test_proxy_fuzz import _ANSWERS, _REQUEST, _check_http1, _judge

from cilia.proxy.http import ConnInfo, serve_connection
from cilia.proxy.http1fast import ClientLeg, Route

EXAMPLES: Counter[str] = Counter()
_LANDING = b"POST /v1/request-landing HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n"


def _run(parts: list[bytes], answer: bytes) -> tuple[bytes, bytes, list[Any]]:
    errors: list[Any] = []
    upstream = bytearray()

    async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(65536)
        upstream.extend(data)
        writer.write(answer)
        writer.write_eof()  # then nothing more from this server
        while data := await reader.read(65536):
            upstream.extend(data)
        writer.close()

    async def go() -> bytes:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        origin_server = await asyncio.start_server(origin, "127.0.0.1", 0)
        port = origin_server.sockets[0].getsockname()[1]

        async def connect() -> socket.socket:
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            return sock

        info = ConnInfo(_judge)

        async def fallback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _at_start: bool) -> None:
            async def open_upstream() -> Any:
                return await asyncio.open_connection(sock=await connect())
            await serve_connection(reader, writer, info, open_upstream, idle_timeout=0.5, upstream_timeout=0.5)

        route = Route(info, connect, fallback)
        tasks: set[asyncio.Task[None]] = set()
        proxy = await loop.create_server(lambda: ClientLeg(lambda _t: route, tasks, idle_timeout=0.5,
                                                           upstream_timeout=0.5), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.sockets[0].getsockname()[1])
        got = bytearray()
        try:
            for part in parts:
                writer.write(part)
                await writer.drain()
            writer.write_eof()
            async with asyncio.timeout(5):  # a hang fails the example
                while data := await reader.read(65536):
                    got += data
        except ConnectionError:  # the proxy may close (and reset) a connection it has answered for good
            pass
        writer.close()
        proxy.close()
        origin_server.close()
        await asyncio.sleep(0)
        return bytes(got)

    loop = uvloop.new_event_loop()
    try:
        got = loop.run_until_complete(go())
    finally:
        loop.close()
    return got, bytes(upstream), errors


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(_REQUEST, st.just(_LANDING), st.binary(max_size=200)), min_size=1, max_size=4),
       _ANSWERS, st.lists(st.integers(min_value=1, max_value=300), max_size=4))
def test_fast_path_answers_or_closes_and_never_forwards_a_denied_request(requests: list[bytes], answer: bytes,
                                                                          cuts: list[int]) -> None:
    EXAMPLES["http1fast"] += 1
    raw = b"".join(requests)
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    parts = [raw[a:b] for a, b in itertools.pairwise(points) if b > a]
    got, upstream, errors = _run(parts, answer)
    assert errors == []
    _check_http1(got, upstream)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    print(f"\nhttp1fast fuzz examples run: {dict(EXAMPLES)} (total {sum(EXAMPLES.values())})")
