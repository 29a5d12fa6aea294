"""`cilia lab`: a cluster in network namespaces (up, down, status, exec, probe)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from cilia.cli.common import Output, OutputOption, fail, print_json, print_table

app = typer.Typer(help="Cluster in a box: nodes, pods and external hosts as network namespaces.",
                  no_args_is_help=True)


@app.command("up")
def up(file: Path = typer.Option(..., "--filename", "-f", help="topology YAML (see docs/lab.md)")) -> None:
    """Bring up the fabric, the nodes with their agents, the external hosts and the pods."""
    from cilia.lab.lab import Lab, LabError
    from cilia.lab.topology import TopologyError, load_topology

    try:
        lab = Lab.up(load_topology(file))
    except (LabError, TopologyError) as exc:
        raise fail(str(exc)) from exc
    pods = lab.state["pods"]
    cluster = (f", {len(lab.etcd_members)} etcd member(s), routing {lab.state['routing']}"
               if lab.cluster else "")
    typer.echo(f"lab up: {len(lab.state['nodes'])} node(s), {len(pods)} pod(s){cluster}")


@app.command("down")
def down() -> None:
    """Tear the lab down; also removes leftovers of a crashed run."""
    from cilia.lab.lab import STATE_FILE, Lab, cleanup_leftovers

    if STATE_FILE.exists():
        Lab.load().down()
    else:
        cleanup_leftovers()
    typer.echo("lab down")


@app.command("status")
def status(output: Output = OutputOption) -> None:
    """Pods (namespace, node, netns, addresses), nodes, external hosts, a cluster lab's etcd members and
    the relay (where it serves)."""
    from cilia.lab.lab import Lab, LabError

    try:
        info = Lab.load().status()
    except LabError as exc:
        raise fail(str(exc)) from exc
    if output is Output.JSON:
        print_json(info)
        return
    print_table("pods", ["NAMESPACE", "POD", "NODE", "NETNS", "IPv4", "IPv6"],
                [(p["namespace"], p["name"], p["node"], p["netns"], p.get("ipv4"), p.get("ipv6"))
                 for p in info["pods"]])
    if "etcd" in info:
        print_table("nodes", ["NODE", "NETNS", "IPv4", "IPv6", "AGENT PID", "ETCD"],
                    [(n, v["netns"], v["ipv4"], v["ipv6"], v.get("agent_pid"),
                      "cut off" if v.get("etcd_cut_off") else "reachable") for n, v in info["nodes"].items()])
    else:
        print_table("nodes", ["NODE", "NETNS", "IPv4", "IPv6", "AGENT PID"],
                    [(n, v["netns"], v["ipv4"], v["ipv6"], v.get("agent_pid")) for n, v in info["nodes"].items()])
    if info["externals"]:
        print_table("external hosts", ["NAME", "NETNS", "IPv4", "IPv6"],
                    [(n, v["netns"], v["ipv4"], v["ipv6"]) for n, v in info["externals"].items()])
    if "etcd" in info:
        print_table(f"etcd members (kvstore etcd, routing {info['routing']})",
                    ["MEMBER", "NETNS", "CLIENT URL", "PID", "STATE", "LEADER"],
                    [(m["name"], m["netns"], m["client_url"], m["pid"] or "-",
                      "healthy" if m["answers"] else "running, not answering" if m["pid"] else "stopped",
                      "yes" if m["leader"] else "") for m in info["etcd"]])
    if "relay" in info:
        relay = info["relay"]
        print_table("relay (cilia-relay)", ["NETNS", "PID", "OBSERVER", "SERVICE MAP", "METRICS"],
                    [(relay["netns"], relay.get("pid") or "stopped", f"unix://{relay['socket']}",
                      f"http://{relay['ui']}/ (in {relay['netns']})", f"http://{relay['metrics']}/metrics")])


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def exec_(ctx: typer.Context, name: str = typer.Argument(..., help="pod, node or external host")) -> None:
    """Run a command in a pod's (node's, external host's) network namespace: cilia lab exec POD -- CMD."""
    from cilia.lab.lab import Lab, LabError

    if not ctx.args:
        raise fail("give a command after --")
    try:
        result = Lab.load().exec(name, list(ctx.args))
    except LabError as exc:
        raise fail(str(exc)) from exc
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    raise typer.Exit(result.returncode)


@app.command("probe")
def probe(
    source: str = typer.Argument(..., help="pod, node or external host to probe from"),
    target: str = typer.Argument(..., help="pod, node, external host or IP"),
    port: int = typer.Option(..., "--port"),
    protocol: str = typer.Option("tcp", "--protocol", help="tcp or udp"),
    ipv6: bool = typer.Option(False, "--ipv6", help="use the target's IPv6 address"),
    timeout: float = typer.Option(3.0, "--timeout"),
) -> None:
    """Connect from SOURCE to TARGET: prints a JSON verdict; exit 0 only when connected."""
    from cilia.lab.lab import Lab, LabError

    if protocol not in ("tcp", "udp"):
        raise fail(f"--protocol {protocol!r}: must be tcp or udp")
    try:
        verdict = Lab.load().probe(source, target, port, protocol, ipv6=ipv6, timeout=timeout)
    except LabError as exc:
        raise fail(str(exc)) from exc
    sys.stdout.write(json.dumps(verdict) + "\n")
    raise typer.Exit(0 if verdict["verdict"] == "connected" else 1)
