"""The service map in the browser, served by the relay (`--ui-listen-address`): a static page
(ui/index.html, ui/app.js: plain HTML+JS, no build step) and the relay's merged flow stream as
server-sent events, so the page draws pods, services and external peers as nodes and flows as
edges coloured by verdict, live.

GET /              the page
GET /app.js        its script
GET /api/flows     text/event-stream: `flow` events (one JSON flow each, `flow_json`), `status`
                   events (nodes connected / unavailable / failing); query: number (history per
                   node, default 500), namespace (only flows from or to it)
GET /api/nodes     the relay's peers and whether each is connected (JSON)"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cilia.hubble.pb import flow_pb2, observer_pb2, relay_pb2
from cilia.relay.observer import RelayObserver
from cilia.relay.pool import NodePool

DEFAULT_HISTORY = 500
_RESERVED = ("world", "host", "remote-node", "health", "kube-apiserver", "ingress", "unmanaged", "init")


def _reserved(labels: list[str]) -> str | None:
    for label in labels:
        if label.startswith("reserved:"):
            name = label.removeprefix("reserved:")
            if name in _RESERVED:
                return name
    return None


def endpoint_json(endpoint: flow_pb2.Endpoint, ip: str) -> dict[str, Any]:
    """An end of a flow as a map node: a pod (`ns/name`), else a reserved entity (world by its IP)."""
    labels = list(endpoint.labels)
    if endpoint.pod_name:
        node_id, kind, name = f"{endpoint.namespace}/{endpoint.pod_name}", "pod", endpoint.pod_name
    else:
        reserved = _reserved(labels) or "world"
        node_id = f"{reserved}:{ip}" if reserved in ("world", "remote-node") else reserved
        kind, name = reserved, (ip if reserved in ("world", "remote-node") else reserved)
    return {"id": node_id, "kind": kind, "name": name, "namespace": endpoint.namespace, "ip": ip,
            "identity": endpoint.identity, "labels": labels}


def flow_json(flow: flow_pb2.Flow) -> dict[str, Any]:
    """What the page needs of a flow (the rest stays on the gRPC API)."""
    l4 = flow.l4
    protocol = l4.WhichOneof("protocol") or ""
    ports: tuple[int, int] = (0, 0)
    if protocol in ("TCP", "UDP", "SCTP"):
        layer = getattr(l4, protocol)
        ports = (layer.source_port, layer.destination_port)
    tcp = l4.TCP.flags
    flags = [f.name for f in tcp.DESCRIPTOR.fields if getattr(tcp, f.name)] if protocol == "TCP" else []
    icmp_type = getattr(l4, protocol).type if protocol in ("ICMPv4", "ICMPv6") else None
    out = {
        "time": flow.time.ToJsonString() if flow.HasField("time") else "",
        "uuid": flow.uuid, "node": flow.node_name,
        "verdict": flow_pb2.Verdict.Name(flow.verdict),
        "drop_reason": flow_pb2.DropReason.Name(flow.drop_reason_desc) if flow.drop_reason_desc else "",
        "type": {1: "drop", 4: "trace", 5: "policy-verdict", 7: "trace-sock"}.get(flow.event_type.type, "other"),
        "is_reply": flow.is_reply.value if flow.HasField("is_reply") else None,
        "direction": flow_pb2.TrafficDirection.Name(flow.traffic_direction),
        "protocol": protocol, "source_port": ports[0], "destination_port": ports[1], "tcp_flags": flags,
        "icmp_type": icmp_type,
        "source": endpoint_json(flow.source, flow.IP.source),
        "destination": endpoint_json(flow.destination, flow.IP.destination),
        "service": (f"{flow.destination_service.namespace}/{flow.destination_service.name}"
                    if flow.destination_service.name else ""),
        "summary": flow.Summary,
    }
    return out


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _namespace_filter(namespace: str) -> list[flow_pb2.FlowFilter]:
    """As `hubble observe --namespace`: from or to the namespace."""
    return [flow_pb2.FlowFilter(source_pod=[f"{namespace}/"]), flow_pb2.FlowFilter(destination_pod=[f"{namespace}/"])]


def app(pool: NodePool, observer: RelayObserver) -> Starlette:
    page = resources.files("cilia.relay").joinpath("ui")

    async def index(request: Request) -> Response:
        return Response(page.joinpath("index.html").read_bytes(), media_type="text/html; charset=utf-8")

    async def script(request: Request) -> Response:
        return Response(page.joinpath("app.js").read_bytes(), media_type="text/javascript; charset=utf-8")

    async def nodes(request: Request) -> Response:
        return JSONResponse([{"name": n.name, "address": n.peer.address, "available": n.available,
                              "state": n.state.name, "error": n.last_error} for n in pool.nodes()])

    async def flows(request: Request) -> Response:
        try:
            number = int(request.query_params.get("number", DEFAULT_HISTORY))
        except ValueError:
            return JSONResponse({"error": "number must be an integer"}, status_code=400)
        grpc_request = observer_pb2.GetFlowsRequest(number=max(0, number), follow=True)
        namespace = request.query_params.get("namespace")
        if namespace:
            grpc_request.whitelist.extend(_namespace_filter(namespace))

        async def events() -> AsyncIterator[bytes]:
            yield b": connected\n\n"  # the browser's EventSource opens now, before any flow
            async for response in observer.flows(grpc_request):
                kind = response.WhichOneof("response_types")
                if kind == "flow":
                    yield _sse("flow", flow_json(response.flow))
                elif kind == "node_status":
                    status = response.node_status
                    yield _sse("status", {"state": relay_pb2.NodeState.Name(status.state_change),
                                          "nodes": list(status.node_names), "message": status.message})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return Starlette(routes=[Route("/", index), Route("/app.js", script), Route("/api/nodes", nodes),
                             Route("/api/flows", flows)])
