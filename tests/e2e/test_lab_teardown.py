"""`cilia lab down` leaves nothing: no namespaces, pins, processes; also after a crashed agent. A
node's nat rules are exact however often its agent starts, and gone after `cilia-agent --cleanup`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.process import in_netns, sh
from cilia.lab.topology import parse_topology
from cilia.paths import BPFFS_ROOT, RUN_ROOT


def cilia_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("cilia-")]


def test_down_after_crash_leaves_nothing() -> None:
    cleanup_leftovers()
    topology = parse_topology({"pods": [{"name": "a", "ports": [{"port": 80}]}, {"name": "b"}]})
    lab = Lab.up(topology)
    agent = int(lab.state["nodes"]["n1"]["agent_pid"])
    assert lab.probe("b", "a", 80)["verdict"] == "connected"
    os.kill(agent, 9)  # a crashed run: the agent is gone, everything else is left behind
    os.waitpid(agent, 0)
    subprocess.run(["cilia", "lab", "down"], check=True, capture_output=True, timeout=120)
    assert cilia_namespaces() == []
    assert not (BPFFS_ROOT / "n1").exists()
    assert not (RUN_ROOT / "n1").exists() and not Path(RUN_ROOT / "lab").exists()


NATIVE = ["--ipv4-native-routing-cidr", "10.200.0.0/16", "--ipv6-native-routing-cidr", "fd00:200::/40"]


def nat_rules(netns: str) -> dict[int, list[str]]:
    """cilia's nat rules in a node's namespace (iptables -S inside it), per family."""
    found: dict[int, list[str]] = {}
    for version, tool in ((4, "iptables"), (6, "ip6tables")):
        out = sh(*in_netns(netns, tool, "-w", "5", "-t", "nat", "-S")).stdout
        found[version] = sorted(line for line in out.splitlines()
                                if any(word in line for word in ("CILIA_", "cilia-masq", "cilia-svc-snat")))
    return found


def test_nat_rules_are_exact_after_restarts_and_gone_after_cleanup() -> None:
    """The masquerade, its native-routing exclusions and the service SNAT live in cilia's own
    chains: once each however often the agent starts, an earlier configuration's rules replaced,
    kept while the agent is stopped (the datapath forwards on), gone after `cilia-agent --cleanup`."""
    cleanup_leftovers()
    topology = parse_topology({"pods": [{"name": "a", "ports": [{"port": 80}]}, {"name": "b"}]})
    lab = Lab.up(topology, agent_args=NATIVE)
    try:
        netns = lab.state["nodes"]["n1"]["netns"]
        first = nat_rules(netns)
        for version, native, snat in ((4, "10.200.0.0/16", "192.0.2.11"), (6, "fd00:200::/40", "fd00:c1a::b")):
            rules = first[version]
            assert sum("-A POSTROUTING" in r and "-j CILIA_MASQ" in r for r in rules) == 1, rules
            assert sum("-A POSTROUTING" in r and "-j CILIA_SVC_SNAT" in r for r in rules) == 1, rules
            assert sum(f"-d {native}" in r and "-j ACCEPT" in r for r in rules) == 1, rules
            assert sum("-j MASQUERADE" in r for r in rules) == 1, rules
            assert sum(f"--to-source {snat}" in r for r in rules) == 1, rules
        # the jump to the masquerade chain comes first: an excluded packet sees no other nat rule
        postrouting = [line for line in sh(*in_netns(netns, "iptables", "-t", "nat", "-S", "POSTROUTING")).stdout
                       .splitlines() if line.startswith("-A")]
        assert "-j CILIA_MASQ" in postrouting[0], postrouting

        lab.restart_agent("n1", kill=False, agent_args=NATIVE)  # SIGTERM, start again: the same rules
        assert nat_rules(netns) == first
        lab.stop_agent("n1")
        assert nat_rules(netns) == first  # the datapath outlives the agent
        lab.start_agent("n1", agent_args=["--ipv4-native-routing-cidr", "10.200.1.0/24"])
        again = nat_rules(netns)
        assert any("-d 10.200.1.0/24" in r for r in again[4]) and not any("10.200.0.0/16" in r for r in again[4])
        assert not any("-j ACCEPT" in r for r in again[6]) and sum("-j MASQUERADE" in r for r in again[6]) == 1
        assert lab.probe("b", "a", 80)["verdict"] == "connected"

        lab.stop_agent("n1", cleanup=True)
        assert nat_rules(netns) == {4: [], 6: []}
        lab.start_agent("n1", agent_args=NATIVE)  # and back, exactly as at first
        assert nat_rules(netns) == first
    finally:
        lab.down()
    assert cilia_namespaces() == []  # the node namespaces, their rules with them
