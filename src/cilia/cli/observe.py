"""`cilia observe` (flows, filtered like hubble observe) and `cilia monitor` (flows as they happen)."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from cilia.cli.common import NodeOption, SocketOption, agent_socket, fail, print_table


class FlowOutput(StrEnum):
    COMPACT = "compact"
    JSON = "json"
    TABLE = "table"


def _side(endpoint: dict[str, Any], ip: str, port: int | None) -> str:
    name = f"{endpoint['namespace']}/{endpoint['pod_name']}" if endpoint.get("pod_name") else ip
    if endpoint.get("pod_name") is None and endpoint.get("labels"):
        name = f"{ip}"
    port_part = f":{port}" if port else ""
    return f"{name}{port_part} (ID:{endpoint.get('identity', 0)})"


def compact_line(record: dict[str, Any]) -> str:
    flow = record["flow"]
    ip = flow.get("IP", {})
    l4: dict[str, Any] = next(iter(flow.get("l4", {}).values()), {})
    when = datetime.fromisoformat(flow["time"].replace("Z", "+00:00")).strftime("%b %d %H:%M:%S.%f")[:-3]
    src = _side(flow.get("source", {}), ip.get("source", "?"), l4.get("source_port"))
    dst = _side(flow.get("destination", {}), ip.get("destination", "?"), l4.get("destination_port"))
    point = flow.get("trace_observation_point", "").lower().replace("_", "-")
    verdict = flow["verdict"]
    summary = flow.get("Summary", "")
    if flow.get("event_type", {}).get("type") == 5:
        direction = flow.get("traffic_direction", "").lower()
        return f"{when}: {src} -> {dst} policy-verdict:{direction} {verdict} ({summary})"
    if verdict == "DROPPED":
        where = flow.get("file", {})
        return f"{when}: {src} <> {dst} {verdict} ({summary}, {where.get('name')}:{where.get('line')})"
    return f"{when}: {src} -> {dst} {point} {verdict} ({summary})"


def observe(
    last: int = typer.Option(20, "--last", help="how many recent flows"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new flows"),
    output: FlowOutput = typer.Option(FlowOutput.COMPACT, "--output", "-o"),
    pod: list[str] = typer.Option([], "--pod", help="[namespace/]pod on either side"),
    from_pod: list[str] = typer.Option([], "--from-pod"),
    to_pod: list[str] = typer.Option([], "--to-pod"),
    namespace: list[str] = typer.Option([], "--namespace"),
    label: list[str] = typer.Option([], "--label", help="key[=value] on either side"),
    ip: list[str] = typer.Option([], "--ip"),
    from_ip: list[str] = typer.Option([], "--from-ip"),
    to_ip: list[str] = typer.Option([], "--to-ip"),
    port: list[str] = typer.Option([], "--port"),
    protocol: list[str] = typer.Option([], "--protocol"),
    verdict: list[str] = typer.Option([], "--verdict", help="FORWARDED, DROPPED, ..."),
    drop_reason: list[str] = typer.Option([], "--drop-reason"),
    traffic_direction: list[str] = typer.Option([], "--traffic-direction"),
    policy: list[str] = typer.Option([], "--policy", help="deciding policy: name, ns/name, Kind/ns/name or "
                                     "default-deny"),
    service: list[str] = typer.Option([], "--service", help="service traffic: [namespace/]name"),
    node: str | None = NodeOption,
    socket: Path | None = SocketOption,
) -> None:
    """Show flows: every forward and drop the datapath saw, with pods, identities and reasons."""
    from cilia.api.client import AgentClient, AgentError, AgentUnavailable

    params: dict[str, Any] = {"last": last, "follow": follow}
    for name, values in (("pod", pod), ("from_pod", from_pod), ("to_pod", to_pod), ("namespace", namespace),
                         ("label", label), ("ip", ip), ("from_ip", from_ip), ("to_ip", to_ip), ("port", port),
                         ("protocol", protocol), ("verdict", verdict), ("drop_reason", drop_reason),
                         ("traffic_direction", traffic_direction), ("policy", policy), ("service", service)):
        if values:
            params[name] = values
    rows: list[list[str]] = []
    try:
        with AgentClient(agent_socket(node, socket)) as client:
            for record in client.stream_lines("/v1/flows", params):
                if output is FlowOutput.JSON:
                    sys.stdout.write(json.dumps(record) + "\n")
                elif output is FlowOutput.COMPACT:
                    sys.stdout.write(compact_line(record) + "\n")
                else:
                    flow = record["flow"]
                    rows.append([flow["time"], flow.get("IP", {}).get("source", ""),
                                 flow.get("IP", {}).get("destination", ""),
                                 flow.get("trace_observation_point", ""), flow["verdict"], flow.get("Summary", "")])
                sys.stdout.flush()
    except KeyboardInterrupt:
        return
    except (AgentUnavailable, AgentError) as exc:
        raise fail(str(exc)) from exc
    if output is FlowOutput.TABLE:
        print_table(None, ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"], rows)


def monitor(
    last: int = typer.Option(0, "--last", help="also print this many recent events first"),
    follow: bool = typer.Option(True, "--follow/--no-follow"),
    node: str | None = NodeOption,
    socket: Path | None = SocketOption,
) -> None:
    """Print raw datapath events (decoded, not enriched) as JSON lines as they happen, until interrupted."""
    from cilia.api.client import AgentClient, AgentError, AgentUnavailable

    try:
        with AgentClient(agent_socket(node, socket)) as client:
            for event in client.stream_lines("/v1/monitor", {"last": last, "follow": follow}):
                sys.stdout.write(json.dumps(event) + "\n")
                sys.stdout.flush()
    except KeyboardInterrupt:
        return
    except (AgentUnavailable, AgentError) as exc:
        raise fail(str(exc)) from exc


def register(app: typer.Typer) -> None:
    app.command("observe")(observe)
    app.command("monitor")(monitor)
