"""CLI commands for services: `cilia service list|get|backend`, `cilia bpf lb list|maglev get`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cilia.cli.agent_cmds import bpf_app, client_for
from cilia.cli.common import NodeOption, Output, OutputOption, SocketOption, fail, print_json, print_table

service_app = typer.Typer(help="Services: frontends and the backends they balance to.", no_args_is_help=True)
bpf_lb_app = typer.Typer(help="The datapath's load-balancing maps.", no_args_is_help=True)
bpf_maglev_app = typer.Typer(help="Maglev lookup tables of external frontends.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(service_app, name="service")
    bpf_lb_app.add_typer(bpf_maglev_app, name="maglev")
    bpf_app.add_typer(bpf_lb_app, name="lb")


def _split(service: str) -> tuple[str, str]:
    namespace, _, name = service.rpartition("/")
    return namespace or "default", name


def _backends_text(frontend: dict[str, Any]) -> str:
    if not frontend["backends"]:
        return "(none: connections are refused)"
    return "\n".join(f"{b['address']} ({b['state']}, weight {b['weight']})" for b in frontend["backends"])


def _print_services(rows: list[dict[str, Any]]) -> None:
    table = []
    for service in rows:
        for frontend in service["frontends"] or [{"address": "-", "protocol": "", "type": service["type"],
                                                   "backends": [], "rev_nat_id": None}]:
            table.append((f"{service['namespace']}/{service['name']}", frontend["type"],
                          f"{frontend['address']}/{frontend['protocol']}", _backends_text(frontend),
                          frontend.get("rev_nat_id"), service["session_affinity"]))
    print_table(None, ["SERVICE", "TYPE", "FRONTEND", "BACKENDS", "REV-NAT", "AFFINITY"], table)


@service_app.command("list")
def service_list(node: str | None = NodeOption, socket: Path | None = SocketOption,
                 output: Output = OutputOption) -> None:
    """Every service: frontend -> backends with state and weight."""
    with client_for(node, socket) as client:
        rows: list[dict[str, Any]] = client.get("/v1/services")
    if output is Output.JSON:
        print_json(rows)
        return
    _print_services(rows)


@service_app.command("get")
def service_get(service: str = typer.Argument(..., help="NAMESPACE/NAME (namespace default if omitted)"),
                node: str | None = NodeOption, socket: Path | None = SocketOption,
                output: Output = OutputOption) -> None:
    """One service in full."""
    namespace, name = _split(service)
    with client_for(node, socket) as client:
        row: dict[str, Any] = client.get(f"/v1/services/{namespace}/{name}")
    if output is Output.JSON:
        print_json(row)
        return
    _print_services([row])
    for conflict in row.get("conflicts", []):
        typer.echo(f"conflict: {conflict}")


@service_app.command("backend")
def service_backend(service: str = typer.Argument(..., help="NAMESPACE/NAME"),
                    backend: str = typer.Argument(..., help="ADDRESS:PORT (IPv6 as [ADDRESS]:PORT)"),
                    state: str = typer.Argument(..., help="quarantined (no new connections) or active"),
                    node: str | None = NodeOption, socket: Path | None = SocketOption,
                    output: Output = OutputOption) -> None:
    """Quarantine a backend (it gets no new connections; established ones finish) or make it active."""
    namespace, name = _split(service)
    address, _, port = backend.rpartition(":")
    if not address or not port.isdigit():
        raise fail(f"backend {backend!r}: expected ADDRESS:PORT")
    with client_for(node, socket) as client:
        row: dict[str, Any] = client.patch(f"/v1/services/{namespace}/{name}/backends",
                                           {"address": address.strip("[]"), "port": int(port), "state": state})
    if output is Output.JSON:
        print_json(row)
        return
    _print_services([row])


@bpf_lb_app.command("list")
def bpf_lb_list(node: str | None = NodeOption, socket: Path | None = SocketOption,
                output: Output = OutputOption) -> None:
    """The service map as the datapath reads it: frontend, slots, backends."""
    with client_for(node, socket) as client:
        rows: list[dict[str, Any]] = client.get("/v1/bpf/lb")
    if output is Output.JSON:
        print_json(rows)
        return
    print_table(None, ["FRONTEND", "PROTO", "REV-NAT", "FLAGS", "BACKENDS (slot: id address state)"], [
        (r["frontend"], r["protocol"], r["rev_nat_id"], ",".join(r["flags"]) or "-",
         "\n".join(f"{b['slot']}: #{b['backend_id']} {b['backend']} {b['state']}" for b in r["backends"]) or "-")
        for r in rows])


@bpf_maglev_app.command("get")
def bpf_maglev_get(service: str = typer.Argument(..., help="NAMESPACE/NAME"),
                   node: str | None = NodeOption, socket: Path | None = SocketOption,
                   output: Output = OutputOption) -> None:
    """The Maglev table of each external frontend of a service: entries per backend."""
    namespace, name = _split(service)
    with client_for(node, socket) as client:
        rows: list[dict[str, Any]] = client.get(f"/v1/services/{namespace}/{name}/maglev")
    if output is Output.JSON:
        print_json(rows)
        return
    if not rows:
        typer.echo(f"service {namespace}/{name} has no external frontend with backends (no Maglev table)")
        return
    print_table(None, ["FRONTEND", "TYPE", "M", "ENTRIES PER BACKEND", "FIRST ENTRIES"], [
        (r["frontend"], r["type"], r["size"],
         "\n".join(f"{k}: {v}" for k, v in sorted(r["entries_per_backend"].items())), " ".join(r["head"][:6]))
        for r in rows])
