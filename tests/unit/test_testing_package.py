"""cilia.testing's pure parts: wait_for's bounds and error, the fake map, packets that parse back
with valid checksums, the reachability oracle's mismatch report."""

from __future__ import annotations

import time

import pytest

from cilia.testing import WaitTimeout, wait_for
from cilia.testing.fakes import FakeMap, MapLog
from cilia.testing.packets import LXC_MAC, POD, POD6, POD_MAC, csum, mac, parse, tcp_packet
from cilia.testing.reach import Key, expect_all, format_mismatches


def test_wait_for_returns_the_first_truthy_value() -> None:
    answers = iter([None, [], ["flow"]])
    assert wait_for(lambda: next(answers), timeout=5, interval=0) == ["flow"]


def test_wait_for_times_out_with_the_message_and_runs_once_more_at_the_deadline() -> None:
    calls: list[float] = []

    def never() -> bool:
        calls.append(time.monotonic())
        return False

    start = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"^no flow to db \(waited 0.2 s\)$"):
        wait_for(never, timeout=0.2, interval=0.05, message=lambda: f"no flow to {'db'}")
    assert 0.2 <= time.monotonic() - start < 2.0  # bounded
    assert len(calls) >= 3 and calls[-1] - start >= 0.2  # the last try is at (or after) the deadline


def test_wait_for_tries_at_least_once_and_rejects_negative_bounds() -> None:
    assert wait_for(lambda: "ready", timeout=0) == "ready"
    with pytest.raises(WaitTimeout):
        wait_for(lambda: False, timeout=0)
    with pytest.raises(ValueError, match="must not be negative"):
        wait_for(lambda: True, timeout=-1)
    assert issubclass(WaitTimeout, AssertionError)  # pytest reports a failed check, not an error


def test_wait_for_lets_the_predicates_own_errors_through() -> None:
    def crashed() -> bool:
        raise RuntimeError("agent exited")

    with pytest.raises(RuntimeError, match="agent exited"):
        wait_for(crashed, timeout=5)


def test_fake_map_counts_and_logs_writes_in_order() -> None:
    log: MapLog = []
    a, b = FakeMap("a", log), FakeMap("b", log)
    a.update(b"k1", b"v1")
    b.update(b"k2", b"v2")
    assert a.delete(b"k1") and not a.delete(b"k1")
    assert log == [("a", "update", b"k1"), ("b", "update", b"k2"), ("a", "delete", b"k1"), ("a", "delete", b"k1")]
    assert (a.writes, b.writes) == (3, 1)  # a delete of a missing key is a write too (the map is asked)
    assert b.lookup(b"k2") == b"v2" and b.lookup(b"nope") is None
    for key, _ in b.items():  # a snapshot: deleting while iterating is fine
        b.delete(key)
    assert list(b.keys()) == [] and b.data == {}


@pytest.mark.parametrize(("src", "dst"), [(POD, "10.96.0.10"), (POD6, "fd00:96::10")])
def test_tcp_packet_parses_back_with_valid_checksums(src: str, dst: str) -> None:
    packet = tcp_packet(src, dst, 40000, 80, flags=0x12, seq=7)
    assert packet[:12] == mac(LXC_MAC) + mac(POD_MAC)
    parsed = parse(packet)
    assert (str(parsed.src), str(parsed.dst), parsed.sport, parsed.dport, parsed.seq, parsed.flags) == (
        src, dst, 40000, 80, 7, 0x12)
    assert parsed.ip_ok and parsed.tcp_ok
    corrupt = packet[:-1] + bytes([packet[-1] ^ 1])  # one bit of the TCP header flipped
    assert not parse(corrupt).tcp_ok


def test_csum_of_data_carrying_its_checksum_is_zero() -> None:
    data = b"\x45\x00\x00\x1c\x00\x01"
    checksum = csum(data)
    assert csum(data + checksum.to_bytes(2, "big")) == 0
    assert csum(b"\x01") == csum(b"\x01\x00")  # odd length: padded


def test_format_mismatches_names_every_difference_and_every_unprobed_key() -> None:
    a: Key = ("x/a", "x/b", 80, "tcp")
    b: Key = ("x/a", "x/c", 81, "tcp")
    c: Key = ("x/b", "x/c", 80, "udp")
    expected = {**expect_all([a, b]), c: False}
    assert format_mismatches(expected, {a: True, b: True, c: False}) == ""
    report = format_mismatches(expected, {a: True, b: False})
    assert report.splitlines() == ["  x/a -> x/c:81/tcp: expected reachable, got blocked",
                                   "  x/b -> x/c:80/udp: expected blocked, got not probed"]
