"""The verifier's work per program stays far from its 1M-instruction limit.

Load time per endpoint grows with it (a CNI ADD waits for bpf_lxc to verify), and a program near
the limit breaks on the next feature or kernel. cil_from_container once needed 873k instructions
(1.7 s per endpoint) until enforce_policy and the conntrack lookup became global BPF functions,
verified once each; it needs ~69k now. The budget fails a change that inlines its way back.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from cilia.datapath import EndpointConfig
from cilia.datapath.manager import Datapath

BUDGET = 250_000  # instructions per program; the verifier refuses a program at 1,000,000


@pytest.fixture
def datapath(pin_dir: Path) -> Datapath:
    return Datapath(pin_dir)  # the objects' maps are pinned below pin_dir, removed after the test


def dual_stack_endpoint(tunnel_ifindex: int = 0) -> EndpointConfig:
    """A real endpoint's configuration: both families on, so no path is pruned at load time (and,
    with a tunnel device, the encapsulation path too)."""
    return EndpointConfig(
        endpoint_id=7, identity=300, lxc_ifindex=12, lxc_mac="02:00:00:00:00:01", pod_mac="02:00:00:00:00:02",
        pod_ipv4=ipaddress.IPv4Address("10.200.1.9"), pod_ipv6=ipaddress.IPv6Address("fd00:200:1::9"),
        router_ipv4=ipaddress.IPv4Address("10.200.1.1"), router_ipv6=ipaddress.IPv6Address("fd00:200:1::1"),
        tunnel_ifindex=tunnel_ifindex)


@pytest.mark.parametrize("tunnel_ifindex", [0, 9], ids=["native", "tunnel"])
def test_every_program_verifies_within_budget(datapath: Datapath, tunnel_ifindex: int) -> None:
    cost = datapath.verifier_cost(dual_stack_endpoint(tunnel_ifindex))
    assert {"cil_from_container", "cil_to_container", "cil_to_container_peer", "cil_from_netdev", "cil_from_overlay",
            "cil_sock4_connect"} <= cost.keys()
    over = {program: n for program, n in cost.items() if n > BUDGET}
    assert not over, f"programs over the verifier budget of {BUDGET:,} instructions: {over} (all: {cost})"
