"""cilia-proxy's HTTP/2 cleartext path against a real gRPC server and client on loopback: each
stream judged on its own (gRPC method paths), a denied one answered `:status 403` / `Access denied`
and never sent on, allowed ones relayed with their trailers, on one client connection."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from cilia.proxy.h2proxy import serve_h2
from cilia.proxy.http import ConnInfo
from cilia.proxy.httpserver import read_preface
from cilia.proxy.policy import Judgement, Request

SEEN: list[str] = []


def _judge(request: Request) -> Judgement:
    allowed = request.path in ("/demo.Greeter/Hello", "/plain") and request.protocol == "HTTP/2"
    return Judgement("FORWARDED" if allowed else "DROPPED", (), 7, True)


class _Handler(grpc.GenericRpcHandler):
    def service(self, details: Any) -> Any:
        method = details.method

        def answer(request: bytes, _ctx: Any) -> bytes:
            SEEN.append(method)
            return b"hello " + request

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture(scope="module")
def proxy_port() -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((_Handler(),))
    backend = server.add_insecure_port("127.0.0.1:0")
    server.start()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        initial = await read_preface(reader)
        await serve_h2(reader, writer, ConnInfo(_judge), lambda: asyncio.open_connection("127.0.0.1", backend),
                       initial, idle_timeout=10)

    async def start() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        port.append(srv.sockets[0].getsockname()[1])
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        server.stop(0)


def test_grpc_methods_judged_per_stream_on_one_connection(proxy_port: int) -> None:
    SEEN.clear()
    with grpc.insecure_channel(f"127.0.0.1:{proxy_port}") as channel:
        hello = channel.unary_unary("/demo.Greeter/Hello")
        secret = channel.unary_unary("/demo.Greeter/Secret")
        assert hello(b"a", timeout=5) == b"hello a"
        with pytest.raises(grpc.RpcError) as denied:
            secret(b"b", timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED  # gRPC's reading of HTTP 403
        assert hello(b"c", timeout=5) == b"hello c"  # the same channel goes on
    assert SEEN == ["/demo.Greeter/Hello", "/demo.Greeter/Hello"]


def test_raw_h2_denied_stream_gets_403_access_denied(proxy_port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for sid, path in ((1, "/denied"), (3, "/also/denied")):
        conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
                          end_stream=True)
    sock.sendall(conn.data_to_send())
    got: dict[int, dict[str, Any]] = {}
    ended: set[int] = set()
    for _ in range(50):
        if ended >= {1, 3}:
            break
        data = sock.recv(65536)
        assert data, "the proxy closed the connection"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                got.setdefault(event.stream_id, {})["headers"] = dict(event.headers or [])
            elif isinstance(event, h2.events.DataReceived):
                got.setdefault(event.stream_id, {}).setdefault("body", b"")
                got[event.stream_id]["body"] += event.data
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
        sock.sendall(conn.data_to_send())
    sock.close()
    for sid in (1, 3):
        assert got[sid]["headers"][b":status"] == b"403" and got[sid]["body"] == b"Access denied"
