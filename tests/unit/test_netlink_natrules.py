"""The pure parts of cilia.netlink.natrules: the iptables-restore input that makes a chain hold
exactly its rules, and which POSTROUTING rules of an older agent are recognised as cilia's."""

from __future__ import annotations

import ipaddress

import pytest

from cilia.netlink.natrules import legacy_rules, restore_text
from cilia.netlink.node import NodeNetConfig, masquerade_rules


def test_restore_text_declares_the_chain_and_refills_it() -> None:
    text = restore_text("CILIA_MASQ", [["-s", "10.0.0.0/24", "!", "-d", "10.0.0.0/24", "-j", "MASQUERADE"]])
    assert text == ("*nat\n:CILIA_MASQ - [0:0]\n-A CILIA_MASQ -s 10.0.0.0/24 ! -d 10.0.0.0/24 -j MASQUERADE\n"
                    "COMMIT\n")
    with pytest.raises(ValueError, match="unquoted"):
        restore_text("CILIA_MASQ", [["--comment", "two words"]])


def test_legacy_rules_are_cilias_own_in_postrouting() -> None:
    listing = "\n".join([
        "-P POSTROUTING ACCEPT",
        "-A POSTROUTING -s 10.200.1.0/24 -d 10.200.0.0/16 -o eth0 -m comment --comment cilia-masq -j RETURN",
        "-A POSTROUTING -m mark --mark 0xc1a0000/0xffff0000 -o eth0 -m comment --comment cilia-svc-snat -j SNAT "
        "--to-source 192.0.2.11",
        "-A POSTROUTING -m comment --comment cilia-masq -j CILIA_MASQ",  # a jump of ours: kept
        "-A POSTROUTING -o eth0 -j MASQUERADE",  # not ours
        '-A POSTROUTING -m comment --comment "someone else" -j ACCEPT',
    ])
    found = legacy_rules(listing)
    assert [rule[-1] for rule in found] == ["RETURN", "192.0.2.11"]
    assert found[0][0] == "POSTROUTING"


def test_masquerade_rules_exclusions_first_and_none_without_masquerade() -> None:
    cfg = NodeNetConfig(None, None, ipaddress.IPv4Network("10.200.1.0/24"), None, "eth0",
                        native_routing_cidrs=(ipaddress.IPv4Network("10.200.0.0/16"),
                                              ipaddress.IPv6Network("fd00:200::/48")))
    rules = masquerade_rules(cfg, 4)
    assert [r[-1] for r in rules] == ["ACCEPT", "MASQUERADE"] and "10.200.0.0/16" in rules[0]
    assert masquerade_rules(cfg, 6) == []  # no IPv6 pod CIDR
    off = NodeNetConfig(None, None, cfg.ipv4_pod_cidr, None, "eth0", masquerade=False)
    assert masquerade_rules(off, 4) == []
