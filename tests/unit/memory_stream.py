"""An in-memory stand-in for asyncio.StreamWriter: what the proxy wrote, and whether it closed
(helpers for the proxy's unit and fuzz tests, which drive serve_connection without sockets)."""

from __future__ import annotations


class MemoryWriter:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True
