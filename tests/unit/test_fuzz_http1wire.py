"""Fuzzing the fast path's HTTP/1.1 framing (cilia.proxy.http1wire) with hypothesis.

Requests, differentially against h11 (the path that answered everything before): whatever bytes
come, `parse_request` returns a request, asks for more, or says Unusual, and never raises anything
else; a request it returns is one h11 reads the same way (method, target, headers, where its body
ends). So the fast path never takes a request h11 would have refused.

Responses: `ResponseFraming` fed well-formed answers split at random offsets passes every byte on
unchanged and stops exactly at the answer's end; fed garbage it raises only ResponseError and never
passes on more than it was given. `EXAMPLES` counts the examples run (pytest -s prints it)."""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Iterator

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cilia.proxy import http1wire
from cilia.proxy.http1wire import ResponseError, ResponseFraming, Unusual, chunked_end, parse_request

EXAMPLES: Counter[str] = Counter()

_METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"get", b"CONNECT", b"", b"G T", b"P\x00", b"M-SEARCH"])
_TARGETS = st.sampled_from([b"/", b"/a?b=c", b"*", b"http://h/x", b"", b"/\x7f", b"/\xff", b"/a b", b"/%20"])
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b"HTTP/1.10", b""])
_HEADER = st.sampled_from([
    b"Host: h", b"host:h", b"Host: h ", b"Host:", b"Host: a\r\nHost: b", b"Content-Length: 3", b"content-length:  0",
    b"Content-Length: 1, 1", b"Content-Length: -1", b"Content-Length: 3\r\nContent-Length: 3",
    b"Content-Length: 99999999999999999999", b"Transfer-Encoding: chunked", b"transfer-encoding: Chunked",
    b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked\r\nContent-Length: 3", b"Connection: close",
    b"Connection: keep-alive, Close", b"Upgrade: h2c", b"Expect: 100-continue", b"X: a\tb", b"X: \x80\xff",
    b"X: \x01", b"X : y", b" X: y", b"X\x00: y", b"X: y\r\n z", b"Bad", b": v", b"X-Long: " + b"v" * 17000,
])
_BODY = st.one_of(st.just(b""), st.binary(max_size=16), st.just(b"abc"), st.just(b"3\r\nabc\r\n0\r\n\r\n"),
                  st.just(b"3;x=y\r\nabc\r\n0\r\n\r\n"), st.just(b"0\r\nT: v\r\n\r\n"), st.just(b"zz\r\n"),
                  st.just(b"1\r\nab\r\n0\r\n\r\n"))
_REQUEST = st.builds(lambda m, t, v, hs, sep, b: m + b" " + t + b" " + v + sep + b"".join(h + sep for h in hs) + sep
                     + b, _METHODS, _TARGETS, _VERSIONS, st.lists(_HEADER, max_size=5),
                     st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]), _BODY)

_PLAIN_HEADER = st.sampled_from([
    b"Content-Length: 3", b"Content-Length: 0", b"Content-Length:16", b"Transfer-Encoding: chunked",
    b"Connection: close", b"X-A: b c", b"X-B:\tv\t", b"Accept: */*", b"X: \x80", b"Cookie: a=b; c=d", b"X-E:",
    b"Content-Length: 3\r\nTransfer-Encoding: chunked", b"Host: again",
])
_MOSTLY_PLAIN = st.builds(lambda m, t, hs, at, b: m + b" " + t + b" HTTP/1.1\r\n" + b"".join(
    h + b"\r\n" for h in [*hs[:at], b"Host: h", *hs[at:]]) + b"\r\n" + b, st.sampled_from(
    [b"GET", b"POST", b"HEAD", b"get", b"OPTIONS"]), st.sampled_from([b"/", b"/a?b=c", b"*", b"http://h/x"]),
    st.lists(_PLAIN_HEADER, max_size=4), st.integers(min_value=0, max_value=4), _BODY)


def _h11_reads(buf: bytes) -> tuple[h11.Request, bytes, int] | None:
    """h11's reading of the first request in `buf`: (request, body, bytes used), None if it refuses."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
    conn.receive_data(buf)
    request = None
    body = b""
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, body, len(buf) - len(conn.trailing_data[0])
            else:
                return None
    except h11.RemoteProtocolError:
        return None


def _dechunk(raw: bytes) -> bytes:
    out, pos = b"", 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol], 16)
        out += raw[eol + 2:eol + 2 + size]
        pos = eol + 4 + size
        if size == 0:
            return out


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(_REQUEST, _MOSTLY_PLAIN, st.binary(max_size=64)), min_size=1, max_size=3))
def test_parse_request_takes_only_what_h11_reads_the_same_way(parts: list[bytes]) -> None:
    EXAMPLES["request"] += 1
    buf = b"".join(parts)
    try:
        head = parse_request(buf)
    except Unusual:
        return
    if head is None:
        return
    EXAMPLES["request-taken"] += 1  # of the above: taken by the fast path, compared with h11
    h11_read = _h11_reads(buf)
    assert h11_read is not None, f"the fast path took a request h11 refuses: {buf[:200]!r}"
    request, body, used = h11_read
    assert (head.method, head.target) == (request.method, request.target)
    assert [(n.lower(), v) for n, v in head.headers] == [(n, v) for n, v in request.headers]
    assert head.end == used
    raw_body = buf[head.head_end:head.end]
    chunked = any(n.lower() == b"transfer-encoding" for n, _v in head.headers)
    assert (_dechunk(raw_body) if chunked else raw_body) == body


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_parse_request_on_garbage_and_every_prefix_raises_only_unusual(raw: bytes, at: int) -> None:
    EXAMPLES["request-garbage"] += 1
    valid = b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    for buf in (raw, valid[:at] + raw, valid[:at % len(valid)]):
        try:
            head = parse_request(buf)
        except Unusual:
            continue
        if head is not None:
            assert head.end <= len(buf)
    with contextlib.suppress(Unusual):
        chunked_end(raw, 0)


# ----- responses ----------------------------------------------------------------------------------
def _body(kind: str, payload: bytes, sizes: list[int]) -> tuple[list[bytes], bytes]:
    if kind == "length":
        return [b"Content-Length: %d" % len(payload)], payload
    if kind == "chunked":
        out, pos = b"", 0
        for size in [*sizes, len(payload)]:
            piece = payload[pos:pos + size]
            pos += len(piece)
            if piece:
                out += b"%x;ext=1\r\n" % len(piece) + piece + b"\r\n"
        return [b"Transfer-Encoding: chunked"], out + b"0\r\nTrailer: t\r\n\r\n"
    return [], b""


_STATUS = st.sampled_from([200, 201, 204, 304, 404, 500, 299])
_EXTRA = st.lists(st.sampled_from([b"Server: x", b"Connection: keep-alive", b"X-Y:", b"Date: Tue\t1 Dec"]),
                  max_size=3)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_STATUS, st.sampled_from(["length", "chunked"]), st.binary(max_size=300), st.lists(
    st.integers(min_value=1, max_value=40), max_size=5), _EXTRA, st.booleans(), st.booleans(),
    st.lists(st.integers(min_value=0, max_value=700), max_size=8), st.binary(max_size=40))
def test_response_framing_passes_answers_unchanged_split_anywhere(status: int, kind: str, payload: bytes,
                                                                  sizes: list[int], extra: list[bytes], head: bool,
                                                                  informational: bool, cuts: list[int],
                                                                  after: bytes) -> None:
    EXAMPLES["response"] += 1
    framing_headers, body = _body(kind, payload, sizes)
    bodiless = head or status in (204, 304)
    answer = b"HTTP/1.1 %d Reason here\r\n" % status + b"".join(h + b"\r\n" for h in framing_headers + extra) + b"\r\n"
    answer += b"" if bodiless else body
    if informational:
        answer = b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + answer
    stream = answer + after
    framing = ResponseFraming(head)
    passed = b""
    used_total = 0
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(points):
        if framing.done:
            break
        out, used = framing.feed(stream[a:b])
        assert used <= b - a
        passed += out
        used_total += used
    assert framing.done and passed == answer and used_total == len(answer)
    assert framing.code == status


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=400), st.builds(lambda a, b: b"HTTP/1.1 200 OK\r\n" + a + b, st.binary(
    max_size=100), st.binary(max_size=100))), st.booleans(), st.lists(st.integers(min_value=0, max_value=500),
                                                                      max_size=6))
def test_response_framing_on_garbage_raises_only_response_error(raw: bytes, head: bool, cuts: list[int]) -> None:
    EXAMPLES["response-garbage"] += 1
    framing = ResponseFraming(head)
    passed = b""
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    try:
        for a, b in itertools.pairwise(points):
            if framing.done:
                break
            out, used = framing.feed(raw[a:b])
            assert 0 <= used <= b - a
            passed += out
        framing.eof()
    except ResponseError:
        pass
    assert raw.startswith(passed)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    total = sum(n for kind, n in EXAMPLES.items() if kind != "request-taken")  # taken: a subset of "request"
    print(f"\nhttp1wire fuzz examples run: {dict(EXAMPLES)} (total {total})")


def _framed(data: bytes, head_request: bool = False) -> tuple[bytes, int, int, bool, bool]:
    framing = ResponseFraming(head_request)
    out, used = framing.feed(data)
    return out, used, framing.code, framing.close, framing.done


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 042 Odd\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"])
def test_a_response_head_seen_before_frames_as_the_first_time(head: bytes) -> None:
    """Heads are remembered (http1wire._HEADS): a repeat, for a GET or a HEAD request, is framed as the first."""
    http1wire._HEADS.clear()
    body = b"ok" if b"chunked" not in head else b"2\r\nok\r\n0\r\n\r\n"
    first = [_framed(head + body + b"rest"), _framed(head + body + b"rest", head_request=True)]
    assert head[:head.index(b"\r\n\r\n")] in http1wire._HEADS and first[0][2] == int(head[9:12])
    assert [_framed(head + body + b"rest"), _framed(head + body + b"rest", head_request=True)] == first


def test_an_informational_head_is_not_an_answers_framing() -> None:
    http1wire._HEADS.clear()
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    for _ in range(2):
        framing = ResponseFraming(False)
        out, used = framing.feed(early + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert (framing.code, framing.done, used) == (200, True, len(out))
    assert not any(raw.startswith(b"HTTP/1.1 103") for raw in http1wire._HEADS)
