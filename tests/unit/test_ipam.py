"""IPAM: allocation, exhaustion, requested addresses, persistence."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cilia.ipam import Ipam, IpamError, IpamExhausted

V4 = ipaddress.IPv4Network("10.9.0.0/29")
V6 = ipaddress.IPv6Network("fd00:9::/64")


def test_allocates_skipping_network_router_broadcast(tmp_path: Path) -> None:
    ipam = Ipam(V4, None, tmp_path / "ipam.json")
    got = [ipam.allocate(f"c{i}").ipv4 for i in range(5)]
    assert [str(a) for a in got] == ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    with pytest.raises(IpamExhausted, match=r"10\.9\.0\.0/29"):
        ipam.allocate("c5")


def test_same_owner_same_address_and_release_rotates(tmp_path: Path) -> None:
    ipam = Ipam(V4, V6, tmp_path / "ipam.json")
    first = ipam.allocate("a")
    assert ipam.allocate("a") == first
    assert first.ipv6 is not None and first.ipv6 in V6
    assert ipam.release("a") and not ipam.release("a")
    assert ipam.allocate("b").ipv4 != first.ipv4  # not handed out again at once


def test_requested_address_checks(tmp_path: Path) -> None:
    ipam = Ipam(V4, None, tmp_path / "ipam.json")
    assert str(ipam.allocate("a", ipv4=ipaddress.IPv4Address("10.9.0.5")).ipv4) == "10.9.0.5"
    with pytest.raises(IpamError, match="already allocated"):
        ipam.allocate("b", ipv4=ipaddress.IPv4Address("10.9.0.5"))
    with pytest.raises(IpamError, match="outside"):
        ipam.allocate("c", ipv4=ipaddress.IPv4Address("10.8.0.5"))
    with pytest.raises(IpamError, match="reserved"):
        ipam.allocate("d", ipv4=ipaddress.IPv4Address("10.9.0.1"))


def test_persists_across_restart(tmp_path: Path) -> None:
    state = tmp_path / "ipam.json"
    first = Ipam(V4, V6, state).allocate("a")
    again = Ipam(V4, V6, state)
    assert again.allocations() == {"a": first}
    assert again.allocate("b").ipv4 != first.ipv4
