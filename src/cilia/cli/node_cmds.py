"""`cilia node list`: the cluster's nodes as the agent knows them."""

from __future__ import annotations

from pathlib import Path

import typer

from cilia.cli.agent_cmds import client_for
from cilia.cli.common import NodeOption, Output, OutputOption, SocketOption, print_json, print_table

node_app = typer.Typer(help="Nodes of the cluster (registered in the kvstore).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(node_app, name="node")


def format_age(seconds: float) -> str:
    """kubectl's style: 45s, 12m, 3h, 2d."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@node_app.command("list")
def node_list(node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption) -> None:
    """Every node: name, underlay addresses, pod CIDRs, routing mode, health, age."""
    with client_for(node, socket) as client:
        nodes = client.list_nodes()
    if output is Output.JSON:
        print_json([n.model_dump() for n in nodes])
        return
    print_table(
        None,
        ["NAME", "IPv4", "IPv6", "POD CIDRS", "ROUTING", "HEALTH", "AGE"],
        [
            (n.name + (" (local)" if n.local else ""), n.ipv4, n.ipv6, "\n".join(n.pod_cidrs), n.routing_mode,
             n.health + (f" ({n.health_reason})" if n.health_reason else ""), format_age(n.age_seconds))
            for n in nodes
        ],
    )
