"""The shared protocol table and address:port formatting."""

from __future__ import annotations

import ipaddress

import pytest

from cilia import ipproto
from cilia.hostport import host_port


def test_names_and_numbers_round_trip() -> None:
    for number, name in ipproto.NAMES.items():
        assert ipproto.number_of(name) == number
        assert ipproto.number_of(name.lower()) == number
        assert ipproto.name_of(number) == name


def test_unknown_protocol() -> None:
    assert ipproto.name_of(250) == "250"
    assert not ipproto.is_known("QUIC")
    with pytest.raises(KeyError, match="QUIC"):
        ipproto.number_of("QUIC")


def test_host_port() -> None:
    assert host_port("10.0.0.1", 80) == "10.0.0.1:80"
    assert host_port(ipaddress.ip_address("fd00::1"), 443) == "[fd00::1]:443"
