"""Small real servers a lab pod runs: TCP (greets with the pod name, then echoes), UDP, HTTP."""

from __future__ import annotations

import argparse
import asyncio
import signal


async def _serve(name: str, tcp: list[int], udp: list[int], http: list[int]) -> None:
    greeting = f"{name}\n".encode()

    async def tcp_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(greeting)
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def http_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            body = greeting
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(greeting, addr)

    loop = asyncio.get_running_loop()
    servers = [await asyncio.start_server(tcp_handler, host=None, port=p, reuse_address=True) for p in tcp]
    servers += [await asyncio.start_server(http_handler, host=None, port=p, reuse_address=True) for p in http]
    for port in udp:
        # One dual-stack socket: IPv4 clients arrive as v4-mapped addresses.
        await loop.create_datagram_endpoint(Udp, local_addr=("::", port))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="cilia lab pod servers")
    parser.add_argument("--name", required=True)
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    parser.add_argument("--http", type=int, action="append", default=[])
    args = parser.parse_args()
    asyncio.run(_serve(args.name, args.tcp, args.udp, args.http))


if __name__ == "__main__":
    main()
