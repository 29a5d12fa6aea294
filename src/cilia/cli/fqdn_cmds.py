"""`cilia fqdn cache list|clean`: the DNS proxy's name cache, through the agent's API."""

from __future__ import annotations

from pathlib import Path

import typer

from cilia.cli.agent_cmds import client_for
from cilia.cli.common import NodeOption, Output, OutputOption, SocketOption, print_json, print_table

fqdn_app = typer.Typer(help="DNS-based policy (toFQDNs): the names the DNS proxy has seen.", no_args_is_help=True)
cache_app = typer.Typer(help="The name cache: allowed DNS answers and their addresses.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    fqdn_app.add_typer(cache_app, name="cache")
    app.add_typer(fqdn_app, name="fqdn")


@cache_app.command("list")
def cache_list(node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption,
               name: str = typer.Option("", "--name", help="only this name")) -> None:
    """Every cached name: its addresses, the TTL left (s) and the endpoints whose lookups returned it."""
    with client_for(node, socket) as client:
        rows = client.get("/v1/fqdn/cache", params={"name": name} if name else None)
    if output is Output.JSON:
        print_json(rows)
        return
    print_table(None, ["NAME", "IP", "TTL LEFT", "SOURCE ENDPOINTS"],
                [(r["name"], r["ip"], r["ttl_left"], ",".join(map(str, r["endpoints"]))) for r in rows])


@cache_app.command("clean")
def cache_clean(node: str | None = NodeOption, socket: Path | None = SocketOption) -> None:
    """Forget every cached name; their addresses leave the ipcache (connections to them are cut)."""
    with client_for(node, socket) as client:
        answer = client.delete_json("/v1/fqdn/cache")
    if not answer.get("cleaned"):
        raise typer.Exit(code=1)
    typer.echo("name cache cleaned")
