"""HTTP/1.1 wire framing for cilia-proxy's fast path (cilia.proxy.http1fast): where a request's head
and body end, and where a response ends, without decoding more than that.

Requests: `parse_request` accepts only a strict subset of what h11 accepts (an HTTP/1.1 request
line, token header names, header values of visible bytes, one Host, at most one Content-Length of
digits or one `Transfer-Encoding: chunked` without chunk extensions or trailers, no Upgrade, no
Expect, no CONNECT, head and body within the h11 path's limits). Everything else raises `Unusual`:
the connection is then handed to the h11 path (cilia.proxy.http), which answers it exactly as it
always has (a 400, 413 or 431, or an Upgrade / CONNECT / Expect it knows how to carry). So the fast
path never accepts a request h11 would refuse.

Responses: `ResponseFraming` is fed the server's bytes as they come and says how many belong to
the answer of the current request (RFC 9112 section 6.3: no body for HEAD, 1xx, 204, 304; then
chunked, Content-Length, or until the server closes). The head is held until it is whole (its
status code and framing are read from it); the body passes as it comes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_HEAD = 16 * 1024  # as the h11 path's (cilia.proxy.http.MAX_HEAD)
MAX_BODY = 8 * 1024 * 1024  # likewise: a larger request body is h11's to answer (413)
MAX_RESPONSE_HEAD = 64 * 1024

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_VALUE = rb"(?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?"
# the whole head but its final CRLF; one C call validates every line
_REQUEST_HEAD = re.compile(_TOKEN + rb" [\x21-\x7e]+ HTTP/1\.1\r\n(?:" + _TOKEN + rb":[ \t]*" + _VALUE
                           + rb"[ \t]*\r\n)*")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
# a status line and header lines (name, colon, anything but CR / LF), each with its CRLF
_RESPONSE_HEAD = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?\r\n(?:" + _TOKEN + rb":[^\r\n]*\r\n)*")
_FRAMING = re.compile(rb"\n(content-length|transfer-encoding|connection):[ \t]*([^\r\n]*?)[ \t]*\r", re.IGNORECASE)
_DIGITS = re.compile(rb"[0-9]{1,18}")


class Unusual(Exception):
    """Not a request for the fast path: the h11 path takes the connection from this request on."""


class ResponseError(Exception):
    """The server's answer cannot be framed: the connection is closed (as the h11 path does)."""


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names as sent, values without surrounding whitespace
    head_end: int  # offset just past the blank line
    end: int  # offset just past the body
    close: bool  # `Connection: close`: the connection ends after the answer
    chunked: bool = False  # the body's end depends on more than the head (`end` is this request's only)


def _has_token(value: bytes, token: bytes) -> bool:
    return any(part.strip(b" \t").lower() == token for part in value.split(b","))


def parse_request(buf: bytes, pos: int = 0) -> RequestHead | None:
    """The request starting at `pos` when all of it (head and body) is in `buf`; None: more bytes are
    needed. Raises Unusual for anything the fast path does not take (see the module's docstring)."""
    blank = buf.find(b"\r\n\r\n", pos)
    if blank < 0:
        if len(buf) - pos > MAX_HEAD:
            raise Unusual("head too long")
        return None
    head_end = blank + 4
    if head_end - pos > MAX_HEAD:
        raise Unusual("head too long")
    if _REQUEST_HEAD.fullmatch(buf, pos, blank + 2) is None:
        raise Unusual("not a plain HTTP/1.1 head")
    lines = buf[pos:blank].split(b"\r\n")
    method, target, _ = lines[0].split(b" ")
    if method == b"CONNECT":
        raise Unusual("CONNECT")
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    length: int | None = None
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        value = value.strip(b" \t")
        headers.append((name, value))
        key = name.lower()
        if key == b"host":
            hosts += 1
        elif key == b"content-length":
            if length is not None or _DIGITS.fullmatch(value) is None:
                raise Unusual("Content-Length")
            length = int(value)
        elif key == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise Unusual("Transfer-Encoding")
            chunked = True
        elif key == b"connection":
            close = close or _has_token(value, b"close")
        elif key in (b"upgrade", b"expect"):
            raise Unusual(key.decode())
    if hosts != 1:
        raise Unusual("Host")
    if chunked:
        if length is not None:
            raise Unusual("Content-Length and Transfer-Encoding")
        end = chunked_end(buf, head_end)
        if end is None:
            return None
    else:
        if length is not None and length > MAX_BODY:
            raise Unusual("body too large")
        end = head_end + (length or 0)
        if len(buf) < end:
            return None
    return RequestHead(method, target, headers, head_end, end, close, chunked)


def chunked_end(buf: bytes, pos: int) -> int | None:
    """Where a chunked body starting at `pos` ends (just past `0 CRLF CRLF`), None: not all in `buf`.
    Chunk extensions, trailers and bodies over MAX_BODY are Unusual (the h11 path's)."""
    total = 0
    while True:
        eol = buf.find(b"\r\n", pos, pos + 18)
        if eol < 0:
            if len(buf) - pos >= 18:
                raise Unusual("chunk size line")
            return None
        if _CHUNK_SIZE.fullmatch(buf, pos, eol) is None:
            raise Unusual("chunk size line")
        size = int(buf[pos:eol], 16)
        total += size
        if total > MAX_BODY:
            raise Unusual("body too large")
        data = eol + 2
        if len(buf) < data + size + 2:
            return None
        if buf[data + size:data + size + 2] != b"\r\n":
            raise Unusual("chunk data")
        pos = data + size + 2
        if size == 0:  # the last chunk; CRLF right after it: no trailers
            return pos


# ----- responses ----------------------------------------------------------------------------------
_HEAD, _LENGTH, _CHUNK_LINE, _CHUNK_DATA, _TRAILERS, _UNTIL_CLOSE, _DONE = range(7)


class ResponseFraming:
    """The answer to one request, fed as the server's bytes arrive.

    `feed(data)` returns (what to send on to the client now, how many bytes of `data` were the
    answer's); when `done`, the rest of `data` is not this answer's. `code` is the final status
    code once the head is read; `close`: the client's connection must end after this answer
    (the server's `Connection: close`, HTTP/1.0, or a body that ends when the server closes)."""

    __slots__ = ("close", "code", "done", "head_request", "held", "remaining", "state")

    def __init__(self, head_request: bool) -> None:
        self.head_request = head_request
        self.state = _HEAD
        self.held = b""  # bytes of an incomplete head or chunk line / trailer section
        self.remaining = 0
        self.code = 0
        self.close = False
        self.done = False

    def feed(self, data: bytes) -> tuple[bytes, int]:
        out: list[bytes] = []
        pos = 0
        n = len(data)
        if self.state == _HEAD and not self.held:  # the usual answer: its head (and body) in one read
            blank = data.find(b"\r\n\r\n")
            if blank >= 0:
                self._read_head(data, 0, blank)
                pos = blank + 4
                if self.state == _LENGTH:
                    end = pos + self.remaining
                    if n >= end:
                        self.remaining = 0
                        self.done = True
                        return (data if n == end else data[:end]), end
                if self.done:
                    return (data if n == pos else data[:pos]), pos
                out.append(data[:pos])
        while pos < n and not self.done:
            state = self.state
            if state == _HEAD:
                pos = self._head(data, pos, out)
            elif state in (_LENGTH, _CHUNK_DATA):
                take = min(self.remaining, n - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    if state == _LENGTH:
                        self.done = True
                    else:
                        self.state = _CHUNK_LINE
            elif state == _CHUNK_LINE:
                pos = self._chunk_line(data, pos, out)
            elif state == _TRAILERS:
                pos = self._trailers(data, pos, out)
            else:  # _UNTIL_CLOSE
                out.append(data[pos:])
                pos = n
        if len(out) == 1:
            return out[0], pos
        return b"".join(out), pos

    def eof(self) -> bool:
        """The server closed: True when that ends the answer (a body delimited by the close)."""
        if self.state == _UNTIL_CLOSE:
            self.done = True
        return self.done

    def _head(self, data: bytes, pos: int, out: list[bytes]) -> int:
        if self.held:
            data, start = self.held + data[pos:], len(self.held)
            base = pos - start  # where `data`'s offset 0 is in the caller's buffer
            pos = 0
        else:
            start, base = 0, 0
        blank = data.find(b"\r\n\r\n", max(pos, start - 3))
        if blank < 0:
            if len(data) - pos > MAX_RESPONSE_HEAD:
                raise ResponseError("response head too long")
            self.held = data[pos:]
            return base + len(data)
        self.held = b""
        end = blank + 4
        self._read_head(data, pos, blank)
        out.append(data[pos:end])
        return base + end

    def _read_head(self, data: bytes, pos: int, blank: int) -> None:
        raw = data[pos:blank]
        framing = _HEADS.get(raw)
        if framing is None:
            framing = _framing(data, pos, blank)
            if not 100 <= framing[0] < 200:  # a final answer's (an informational one frames no answer)
                if len(_HEADS) >= _HEADS_KEPT:
                    _HEADS.clear()
                _HEADS[raw] = framing
        code, close, length, chunked = framing
        if 100 <= code < 200:
            return  # informational: sent on, the final answer follows
        self.code = code
        self.close = close
        if self.head_request or code in (204, 304):
            self.done = True
        elif chunked:
            self.state = _CHUNK_LINE
        elif length is not None:
            self.remaining = length
            self.state = _LENGTH
            self.done = length == 0
        else:
            self.state = _UNTIL_CLOSE
            self.close = True


    def _chunk_line(self, data: bytes, pos: int, out: list[bytes]) -> int:
        line = self.held + data[pos:pos + 4096]
        eol = line.find(b"\r\n")
        if eol < 0:
            if len(line) >= 4096:
                raise ResponseError("chunk size line")
            self.held = line
            out.append(data[pos:])
            return len(data)
        used = eol + 2 - len(self.held)  # of `data`, from pos
        size_field = line[:eol].split(b";", 1)[0].strip(b" \t")  # extensions pass through unread
        self.held = b""
        if _CHUNK_SIZE.fullmatch(size_field) is None:
            raise ResponseError("chunk size")
        size = int(size_field, 16)
        out.append(data[pos:pos + used])
        if size == 0:
            self.state = _TRAILERS
            self.held = b"\r\n"  # the trailer section ends at the first empty line: CRLF CRLF from here
        else:
            self.remaining = size + 2
            self.state = _CHUNK_DATA
        return pos + used

    def _trailers(self, data: bytes, pos: int, out: list[bytes]) -> int:
        seen = self.held + data[pos:]
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            if len(seen) > MAX_RESPONSE_HEAD:
                raise ResponseError("trailers too long")
            self.held = seen[-3:] if len(seen) >= 3 else seen
            out.append(data[pos:])
            return len(data)
        used = end + 4 - len(self.held)
        self.held = b""
        out.append(data[pos:pos + used])
        self.done = True
        return pos + used


# response heads seen (bytes before the blank line -> what _framing read of them): servers send
# the same few heads again and again (nginx: one per second, its Date); cleared when full
_HEADS: dict[bytes, tuple[int, bool, int | None, bool]] = {}
_HEADS_KEPT = 256


def _framing(data: bytes, pos: int, blank: int) -> tuple[int, bool, int | None, bool]:
    """(status code, the server closes, Content-Length, chunked) of the head in data[pos:blank]."""
    head = _RESPONSE_HEAD.fullmatch(data, pos, blank + 2)
    if head is None:
        raise ResponseError("status line or header line")
    code = int(head.group(2))
    close = head.group(1) == b"0"
    length: int | None = None
    chunked = False
    # only the framing headers are read (one C scan), the rest passes as it is
    for name, value in _FRAMING.findall(data, head.end(2), blank + 2):
        key = name.lower()
        if key == b"content-length":
            if _DIGITS.fullmatch(value) is None or (length is not None and length != int(value)):
                raise ResponseError("Content-Length")
            length = int(value)
        elif key == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                raise ResponseError("Transfer-Encoding")  # h11 carries no other coding either
            chunked = True
        elif _has_token(value, b"close"):
            close = True
    if code == 101:
        raise ResponseError("101 without an Upgrade request")
    return code, close, length, chunked
