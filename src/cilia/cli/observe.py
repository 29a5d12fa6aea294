"""`cilia observe` (flows, filtered like hubble observe) and `cilia monitor` (raw events).

`observe` is a Hubble client: it reads the node's Observer API on its hubble.sock
(`/run/cilia/<node>/hubble.sock`, or `--server unix://PATH` / `HOST:PORT`) with GetFlows, the
flags turned into Hubble filters by `cilia.cli.observe_request`. Output: `compact` (one line a
flow, like hubble's), `json` (`{"flow": ..., "node_name": ..., "time": ...}` per line, Hubble's
JSON with the .proto field names, as `hubble observe -o json`), `table`."""

from __future__ import annotations

import json
import sys
from collections import deque
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from cilia.cli.common import NodeOption, SocketOption, agent_socket, fail, print_table
from cilia.cli.observe_request import ObserveArgs, ObserveArgumentError, build_request, client_side_match
from cilia.paths import NodePaths, default_node_name


class FlowOutput(StrEnum):
    COMPACT = "compact"
    JSON = "json"
    TABLE = "table"


def _side(endpoint: Any, ip: str, port: int, names: Any = ()) -> str:
    # as hubble's printer: the pod, else the DNS names the IP resolved to (source/destination_names), else the IP
    name = (f"{endpoint.namespace}/{endpoint.pod_name}" if endpoint.pod_name
            else ",".join(names) if names else ip or "?")
    return f"{name}{f':{port}' if port else ''} (ID:{endpoint.identity})"


def _ports(flow: Any) -> tuple[int, int]:
    which = flow.l4.WhichOneof("protocol")
    if which in ("TCP", "UDP", "SCTP"):
        l4 = getattr(flow.l4, which)
        return l4.source_port, l4.destination_port
    return 0, 0


def l7_kind(flow: Any) -> str:
    """An L7 flow's type as hubble prints it: http-request, dns-response, ..."""
    from cilia.hubble.pb import flow_pb2

    record = flow.l7.WhichOneof("record") or "l7"
    return f"{record}-" + {flow_pb2.REQUEST: "request", flow_pb2.RESPONSE: "response"}.get(flow.l7.type, "sample")


def compact_line(flow: Any) -> str:
    """One flow.Flow as observe's compact line."""
    from cilia.hubble.pb import flow_pb2

    when = flow.time.ToDatetime().strftime("%b %d %H:%M:%S.%f")[:-3]
    sport, dport = _ports(flow)
    src = _side(flow.source, flow.IP.source, sport, flow.source_names)
    dst = _side(flow.destination, flow.IP.destination, dport, flow.destination_names)
    verdict = flow_pb2.Verdict.Name(flow.verdict)
    if flow.event_type.type == 129:
        return f"{when}: {src} -> {dst} {l7_kind(flow)} {verdict} ({flow.Summary})"
    if flow.event_type.type == 5:
        direction = flow_pb2.TrafficDirection.Name(flow.traffic_direction).lower()
        return f"{when}: {src} -> {dst} policy-verdict:{direction} {verdict} ({flow.Summary})"
    if flow.verdict == flow_pb2.DROPPED:
        return f"{when}: {src} <> {dst} {verdict} ({flow.Summary}, {flow.file.name}:{flow.file.line})"
    point = flow_pb2.TraceObservationPoint.Name(flow.trace_observation_point).lower().replace("_", "-")
    return f"{when}: {src} -> {dst} {point} {verdict} ({flow.Summary})"


def _json_line(response: Any) -> str:
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True))


def hubble_target(node: str | None, server: str | None, socket: Path | None) -> str:
    if server:
        return server
    if socket is not None:
        return f"unix://{socket}"
    return f"unix://{NodePaths(node or default_node_name()).hubble_socket}"


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
    drop_reason: list[str] = typer.Option([], "--drop-reason", help="Hubble's name (POLICY_DENIED, ...) or "
                                          "cilia's (`cilia bpf metrics list`)"),
    traffic_direction: list[str] = typer.Option([], "--traffic-direction"),
    policy: list[str] = typer.Option([], "--policy", help="deciding policy: name, ns/name, Kind/ns/name or "
                                     "default-deny"),
    service: list[str] = typer.Option([], "--service", help="service traffic: [namespace/]name"),
    event_type: list[str] = typer.Option([], "--type", "-t", help="drop, trace[:to-endpoint...], policy-verdict, "
                                         "trace-sock, l7 (hubble's names)"),
    http_method: list[str] = typer.Option([], "--http-method", help="L7: HTTP method (GET, ...)"),
    http_status: list[str] = typer.Option([], "--http-status", help="L7: HTTP status code, or a prefix: 4+, 40+"),
    http_path: list[str] = typer.Option([], "--http-path", help="L7: regex on the request's path"),
    http_url: list[str] = typer.Option([], "--http-url", help="L7: regex on the request's URL"),
    fqdn: list[str] = typer.Option([], "--fqdn", help="a side's DNS name or the DNS query (* wildcards)"),
    from_fqdn: list[str] = typer.Option([], "--from-fqdn", help="the source's DNS name (* wildcards)"),
    to_fqdn: list[str] = typer.Option([], "--to-fqdn", help="the destination's DNS name (* wildcards)"),
    dns_query: list[str] = typer.Option([], "--dns-query", help="L7: regex on the DNS query"),
    server: str | None = typer.Option(None, "--server", envvar="HUBBLE_SERVER",
                                      help="Hubble server: unix:///path/hubble.sock or host:port "
                                           "(default: the node's hubble.sock)"),
    node: str | None = NodeOption,
    socket: Path | None = typer.Option(None, "--socket", help="the node's hubble.sock (overrides --node)"),
) -> None:
    """Show flows: every forward and drop the datapath saw, with pods, identities and reasons."""
    import grpc

    from cilia.hubble.pb import observer_pb2_grpc

    args = ObserveArgs(last=last, follow=follow, pod=pod, from_pod=from_pod, to_pod=to_pod, namespace=namespace,
                       label=label, ip=ip, from_ip=from_ip, to_ip=to_ip, port=port, protocol=protocol,
                       verdict=verdict, drop_reason=drop_reason, traffic_direction=traffic_direction,
                       policy=policy, service=service, type=event_type, http_method=http_method,
                       http_status=http_status, http_path=http_path, http_url=http_url, fqdn=fqdn,
                       from_fqdn=from_fqdn, to_fqdn=to_fqdn, dns_query=dns_query)
    try:
        request = build_request(args)
    except ObserveArgumentError as exc:
        raise fail(str(exc)) from exc
    target = hubble_target(node, server, socket)
    kept: deque[Any] = deque(maxlen=last if not follow and last > 0 else None)
    rows: list[list[str]] = []

    def emit(response: Any) -> None:
        flow = response.flow
        if output is FlowOutput.JSON:
            sys.stdout.write(_json_line(response) + "\n")
        elif output is FlowOutput.COMPACT:
            sys.stdout.write(compact_line(flow) + "\n")
        else:
            from cilia.hubble.pb import flow_pb2

            rows.append([flow.time.ToJsonString(), flow.IP.source, flow.IP.destination,
                         l7_kind(flow) if flow.event_type.type == 129
                         else flow_pb2.TraceObservationPoint.Name(flow.trace_observation_point),
                         flow_pb2.Verdict.Name(flow.verdict), flow.Summary])
        sys.stdout.flush()

    try:
        with grpc.insecure_channel(target) as channel:
            stub = observer_pb2_grpc.ObserverStub(channel)  # type: ignore[no-untyped-call]
            for response in stub.GetFlows(request):
                if response.HasField("lost_events"):
                    lost = response.lost_events
                    sys.stderr.write(f"EVENTS LOST: {lost.source} {lost.num_events_lost}\n")
                    continue
                if not response.HasField("flow") or not client_side_match(args, response.flow):
                    continue
                if follow:
                    emit(response)
                else:
                    kept.append(response)  # the request may have asked for more: keep the last N
    except KeyboardInterrupt:
        return
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        raise fail(f"hubble server {target}: {code.name if code else 'error'}: {details}") from exc
    for response in kept:
        emit(response)
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
