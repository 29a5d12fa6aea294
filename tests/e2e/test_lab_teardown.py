"""`cilia lab down` leaves nothing: no namespaces, pins, processes; also after a crashed agent."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cilia.lab.lab import Lab, cleanup_leftovers
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
