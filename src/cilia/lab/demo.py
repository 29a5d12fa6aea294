"""`make demo`: a lab with pods, traffic in every direction, the flows it made, then teardown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console

from cilia.lab.lab import Lab, cleanup_leftovers
from cilia.lab.topology import load_topology

console = Console()
TOPOLOGY = Path(__file__).resolve().parents[3] / "examples" / "lab-basic.yaml"


def step(text: str) -> None:
    console.print(f"\n[bold cyan]==> {text}[/bold cyan]")


def main() -> None:
    cleanup_leftovers()
    step(f"bringing up the lab from {TOPOLOGY.name}: node n1 (agent in its netns), pods, an external host")
    lab = Lab.up(load_topology(TOPOLOGY))
    try:
        cilia = str(Path(sys.executable).with_name("cilia"))
        subprocess.run([cilia, "lab", "status"], check=False)
        step("pods talking (every connection crosses cilia's eBPF programs)")
        for source, target, port, protocol, ipv6, what in (
            ("client", "web", 80, "tcp", False, "pod -> pod, same node (bpf_redirect_peer)"),
            ("client", "web", 80, "tcp", True, "pod -> pod over IPv6"),
            ("client", "web", 53, "udp", False, "pod -> pod UDP"),
            ("client", "db", 5432, "tcp", False, "pod -> pod across namespaces"),
            ("client", "world1", 80, "tcp", False, "pod -> world (masqueraded by the node)"),
            ("n1", "web", 8080, "tcp", False, "node -> pod"),
        ):
            verdict = lab.probe(source, target, port, protocol, ipv6=ipv6)
            colour = "green" if verdict["verdict"] == "connected" else "red"
            console.print(f"  {what:45} [{colour}]{verdict['verdict']}[/{colour}] {verdict.get('peer', '')}")
        step("the flows those connections made (cilia observe --last 20)")
        subprocess.run([cilia, "observe", "--node", "n1", "--last", "20"], check=False)
        step("endpoints and their identities")
        subprocess.run([cilia, "endpoint", "list", "--node", "n1"], check=False)
    finally:
        step("tearing the lab down")
        lab.down()
        console.print("done: no cilia-* namespaces, pins or processes remain")


if __name__ == "__main__":
    main()
