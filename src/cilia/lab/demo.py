"""`make demo`: a lab with pods, traffic in every direction, the flows it made, then teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from rich.console import Console

from cilia.lab.lab import PYTHON, Lab, cleanup_leftovers
from cilia.lab.topology import PodSpec, PortSpec, load_topology

console = Console()
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TOPOLOGY = EXAMPLES / "lab-basic.yaml"
POLICY = EXAMPLES / "policy-web.yaml"
SERVICE = EXAMPLES / "service-echo.yaml"


def step(text: str) -> None:
    console.print(f"\n[bold cyan]==> {text}[/bold cyan]")


def run(*args: str) -> None:
    """A cilia command as a user would type it; wide tables even when the output is not a terminal."""
    subprocess.run([str(Path(sys.executable).with_name("cilia")), *args], check=False,
                   env={**os.environ, "COLUMNS": "160"})


def main() -> None:
    cleanup_leftovers()
    step(f"bringing up the lab from {TOPOLOGY.name}: node n1 (agent in its netns), pods, an external host")
    lab = Lab.up(load_topology(TOPOLOGY))
    try:
        cilia = str(Path(sys.executable).with_name("cilia"))
        run("lab", "status")
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
        run("observe", "--node", "n1", "--last", "20")
        service_demo(lab)
        step(f"applying a policy: cilia policy import -f {POLICY.name}")
        console.print(POLICY.read_text().strip())
        run("policy", "import", "--node", "n1", "-f", str(POLICY))
        for source, target, port, what in (
            ("client", "web", 80, "client -> web:80 (allowed by web-from-client)"),
            ("client", "web", 8080, "client -> web:8080 (no rule allows it)"),
            ("db", "web", 80, "team-a/db -> web:80 (denied by deny-team-a)"),
        ):
            verdict = lab.probe(source, target, port, "tcp", timeout=1.5)
            colour = "green" if verdict["verdict"] == "connected" else "red"
            console.print(f"  {what:50} [{colour}]{verdict['verdict']}[/{colour}]")
        step("the drops, each naming the policy that decided (cilia observe --verdict DROPPED)")
        run("observe", "--node", "n1", "--verdict", "DROPPED", "--last", "6")
        step("asking without sending a packet: cilia policy trace --src-pod team-a/db --dst-pod web --dport 80/tcp")
        run("policy", "trace", "--node", "n1", "--src-pod", "team-a/db", "--dst-pod", "web",
                        "--dport", "80/tcp")
        step("endpoints, their identities and policy enforcement")
        run("endpoint", "list", "--node", "n1")
        step("web's policy map (cilia bpf policy get)")
        web = next(p for p in lab.state["pods"].values() if p["name"] == "web")
        endpoint_ids = subprocess.run([cilia, "endpoint", "list", "--node", "n1", "-o", "json"], check=False,
                                      capture_output=True, text=True).stdout
        web_id = next((e["id"] for e in json.loads(endpoint_ids or "[]") if e["ipv4"] == web["ipv4"]), None)
        if web_id is not None:
            run("bpf", "policy", "get", str(web_id), "--node", "n1")
    finally:
        step("tearing the lab down")
        lab.down()
        console.print("done: no cilia-* namespaces, pins or processes remain")


def service_demo(lab: Lab) -> None:
    """A ClusterIP service over two pods: connections spread across both, each with its flow."""
    step("two more pods, echo-1 and echo-2 (app=echo), and a ClusterIP service over them: "
         f"cilia apply -f {SERVICE.name}")
    for name in ("echo-1", "echo-2"):
        lab.add_pod(PodSpec(name, "default", "n1", {"app": "echo"}, None, (PortSpec(7000, "tcp", "echo"),)))
    console.print(SERVICE.read_text().strip())
    run("apply", "--node", "n1", "-f", str(SERVICE))
    run("service", "list", "--node", "n1")
    step("20 connections from client to 10.96.0.50:80 (socket LB: translated once, at connect())")
    request = json.dumps([{"to": "10.96.0.50", "port": 80, "protocol": "tcp"}] * 20)
    answers = json.loads(lab.exec("client", [PYTHON, "-m", "cilia.lab.probe", "--many", request]).stdout or "[]")
    spread = Counter(str(a.get("peer")) if a["verdict"] == "connected" else a["verdict"] for a in answers)
    for backend, count in sorted(spread.items()):
        console.print(f"  {backend:10} {count:3} connections")
    step("their flows: each translation names the service, its address and the backend chosen")
    run("observe", "--node", "n1", "--service", "default/echo", "--last", "6")
    step("the service map the datapath reads (cilia bpf lb list)")
    run("bpf", "lb", "list", "--node", "n1")


if __name__ == "__main__":
    main()
