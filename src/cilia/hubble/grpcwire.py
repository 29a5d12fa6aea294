"""What gRPC puts on HTTP/2 besides frames, for cilia's own gRPC server (cilia.hubble.h2conn):
the 5-byte message prefix, `grpc-timeout` and `grpc-message` encodings, the status an RPC ends
with, and the table of methods a servicer offers.

The method table stands in for a grpc.aio.Server in the generated `add_*Servicer_to_server`
functions (and our own cilia.hubble.server.add_observer), so the same servicer objects and the
same request deserializers / response serializers serve over grpcio or over our HTTP/2. A call's
context offers what those servicers use of grpc.aio.ServicerContext (abort, write, metadata,
time remaining)."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

PREFIX = struct.Struct(">BI")  # compressed flag, big-endian message length
MAX_RECEIVE_MESSAGE = 4 * 1024 * 1024  # grpc's default limit on a received message

_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


class RpcStatus(Exception):
    """Ends a call with a status other than OK (raised by CallContext.abort)."""

    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def status_number(code: grpc.StatusCode) -> int:
    return int(code.value[0])


def parse_timeout(value: bytes) -> float:
    """`grpc-timeout` in seconds: 1 to 8 ASCII digits and a unit (H M S m u n); ValueError otherwise."""
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or unit not in _TIMEOUT_UNITS:
        raise ValueError(f"malformed grpc-timeout: {value!r}")
    return int(digits) * _TIMEOUT_UNITS[unit]


def percent_encode(message: str) -> bytes:
    """`grpc-message` as the spec has it: UTF-8, every byte outside 0x20-0x7E and `%` as %XX."""
    data = message.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in data):
        return data
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in data)


def percent_decode(value: bytes) -> str:
    """The inverse of percent_encode (a malformed escape is kept as it is, as grpc-go does)."""
    out = bytearray()
    i = 0
    while i < len(value):
        if value[i] == 0x25 and _is_hex(value[i + 1:i + 3]):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(value[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


@dataclass(frozen=True)
class _CallDetails:
    """What a generic handler is asked about (grpc.HandlerCallDetails' fields)."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BatchedStream:
    """A server-streaming method whose handler yields lists of serialized responses (framed a list
    at a time: cilia.hubble.server's GetFlows); the fields a grpc.RpcMethodHandler has."""

    unary_stream: Callable[[Any, Any], Any]
    request_deserializer: Callable[[bytes], Any]
    request_streaming: bool = False
    response_streaming: bool = True
    response_serializer: None = None
    batched: bool = True


class MethodTable:
    """The methods served, by path (`/package.Service/Method`): filled as a grpc.aio.Server is by
    the generated registration functions (both their calls are taken, the registered handlers
    first)."""

    def __init__(self) -> None:
        self._methods: dict[str, Any] = {}
        self._generic: list[Any] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        for name, handler in handlers.items():
            self._methods[f"/{service}/{name}"] = handler

    def add_batched(self, path: str, handler: Callable[[Any, Any], Any], deserializer: Callable[[bytes], Any]) -> None:
        """Serves `path` with a handler yielding lists of serialized responses (in place of the one
        registered, which yields them one by one for grpcio)."""
        self._methods[path] = BatchedStream(handler, deserializer)

    def services(self) -> set[str]:
        return {path.split("/")[1] for path in self._methods}

    def lookup(self, path: str) -> Any:
        """The grpc.RpcMethodHandler for `path`, or None."""
        handler = self._methods.get(path)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(_CallDetails(path))
                if handler is not None:
                    self._methods[path] = handler
                    break
        return handler

    def unknown(self, path: str) -> str:
        """grpc-go's words for a path nothing serves."""
        service, sep, method = path.removeprefix("/").rpartition("/")
        if not path.startswith("/") or not sep:
            return f"malformed method name: {path!r}"
        if service not in self.services():
            return f"unknown service {service}"
        return f"unknown method {method} for service {service}"


class CallContext:
    """What a servicer sees of its call (the parts of grpc.aio.ServicerContext cilia's servicers
    and grpcio's health servicer use)."""

    def __init__(self, metadata: Sequence[tuple[bytes, bytes]], deadline: float | None, peer: str,
                 write: Callable[[Any], Any]) -> None:
        self._metadata = metadata
        self._deadline = deadline
        self._peer = peer
        self._write = write
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.is_cancelled = False

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise RpcStatus(code, details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def write(self, message: Any) -> None:
        await self._write(message)

    async def send_initial_metadata(self, metadata: Any) -> None:
        """Response headers go with the first message (custom initial metadata is not sent)."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in self._metadata
                     if not k.startswith(b":"))

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def peer(self) -> str:
        return self._peer

    def cancelled(self) -> bool:
        return self.is_cancelled

    def done(self) -> bool:
        return self.is_cancelled
