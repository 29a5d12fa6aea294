"""The relay's Observer service: upstream hubble-relay's semantics over the node pool.

GetFlows sends the client's request to every available node and merges their answers in time
order (cilia.relay.merge); first a NodeStatusEvent naming the nodes it reads (NODE_CONNECTED) and
one naming those it cannot (NODE_UNAVAILABLE), later a NODE_ERROR event for a node whose stream
fails mid-way (the others go on). A follower also picks up nodes that become available while it
follows. As upstream, `number` is sent to every node (each node's last N). ServerStatus sums the
available nodes' statuses (the oldest uptime) and reports num_connected_nodes /
num_unavailable_nodes / unavailable_nodes (at most 10 named); GetNodes lists every peer with its
state; GetNamespaces merges the nodes' answers. GetAgentEvents / GetDebugEvents are not relayed,
as upstream (UNIMPLEMENTED)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
from google.protobuf.descriptor import Descriptor

from cilia import __version__
from cilia.hubble.filters import FilterError, FlowFilters
from cilia.hubble.pb import flow_pb2, observer_pb2, observer_pb2_grpc, relay_pb2
from cilia.relay.merge import DEFAULT_WINDOW_S, Item, Merger
from cilia.relay.pool import Node, NodePool

VERSION = f"cilia-relay v{__version__}"
RELAY_NODE_NAME = "cilia-relay"  # the node_name of the relay's own NodeStatusEvents
UNAVAILABLE_REPORT_MAX = 10  # as upstream: ServerStatus names at most this many unavailable nodes
PEER_UPDATE_INTERVAL_S = 1.0  # how often a follower looks for nodes it does not read yet
CALL_TIMEOUT_S = 5.0  # unary calls to a node
_FLOW_DESCRIPTOR = cast(Descriptor, flow_pb2.Flow.DESCRIPTOR)


@dataclass
class RelayStats:
    """What the relay's /metrics reports about its own work."""

    flows_forwarded: int = 0
    streams_open: int = 0
    node_errors: int = 0


def _time_ns(response: observer_pb2.GetFlowsResponse) -> int:
    return int(response.time.ToNanoseconds())


def node_status(state: int, nodes: list[str], message: str = "") -> observer_pb2.GetFlowsResponse:
    response = observer_pb2.GetFlowsResponse(node_name=RELAY_NODE_NAME)
    response.time.GetCurrentTime()
    response.node_status.state_change = state  # type: ignore[assignment]
    response.node_status.node_names.extend(nodes)
    response.node_status.message = message
    return response


def error_message(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error) or type(error).__name__


def check_request(request: observer_pb2.GetFlowsRequest) -> str | None:
    """What is wrong with a GetFlows request, as the agents would say it (None: nothing)."""
    if request.first and request.follow:
        return "first cannot be specified with follow"
    try:
        FlowFilters(request.whitelist, request.blacklist)
    except FilterError as exc:
        return str(exc)
    if request.HasField("field_mask") and request.field_mask.paths \
            and not request.field_mask.IsValidForDescriptor(_FLOW_DESCRIPTOR):
        return f"invalid field mask: {list(request.field_mask.paths)}"
    return None


async def node_flows(node: Node, request: observer_pb2.GetFlowsRequest) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
    """One node's answer to the request. Any gRPC error ends it as the node's error, CANCELLED too:
    the relay's own cancellation (its client went away) arrives as asyncio.CancelledError, so a
    cancelled status comes from the node (an agent stopping cancels its streams)."""
    call = node.stub.GetFlows(request)
    try:
        async for response in call:
            yield response
    finally:
        call.cancel()


class RelayObserver(observer_pb2_grpc.ObserverServicer):
    def __init__(self, pool: NodePool, *, window: float = DEFAULT_WINDOW_S,
                 peer_update_interval: float = PEER_UPDATE_INTERVAL_S) -> None:
        self._pool = pool
        self._window = window
        self._peer_update = peer_update_interval
        self.stats = RelayStats()

    # ----- flows ---------------------------------------------------------------------------------
    async def flows(self, request: observer_pb2.GetFlowsRequest) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
        """The merged stream (also what the service map page reads): status events, then flows."""
        # A follower with `until` ends like a history read, once every node has reached it.
        open_ended = request.follow and not request.HasField("until")
        merger: Merger[observer_pb2.GetFlowsResponse] = Merger(_time_ns, follow=open_ended, window=self._window)
        finished: set[str] = set()  # nodes whose stream ended cleanly: never read again by this request
        connected, unavailable = [], []
        for node in self._pool.nodes():
            if node.available:
                merger.add(node.name, node_flows(node, request))
                connected.append(node.name)
            else:
                unavailable.append(node.name)
        if connected:
            yield node_status(relay_pb2.NODE_CONNECTED, connected)
        if unavailable:
            yield node_status(relay_pb2.NODE_UNAVAILABLE, unavailable)
        refresher = asyncio.get_running_loop().create_task(self._pick_up(merger, request, finished)) \
            if request.follow else None
        self.stats.streams_open += 1
        try:
            async for event in merger:
                if isinstance(event, Item):
                    self.stats.flows_forwarded += 1
                    yield event.value
                elif event.error is not None:
                    self.stats.node_errors += 1
                    yield node_status(relay_pb2.NODE_ERROR, [event.node], error_message(event.error))
                else:
                    finished.add(event.node)
        finally:
            self.stats.streams_open -= 1
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            await merger.close()

    async def _pick_up(self, merger: Merger[observer_pb2.GetFlowsResponse], request: observer_pb2.GetFlowsRequest,
                       finished: set[str]) -> None:
        """A follower reads nodes that (re)connect after it started, as upstream's relay (not those
        that ended their answer, e.g. at `until`)."""
        while True:
            await asyncio.sleep(self._peer_update)
            for node in self._pool.nodes():
                if node.available and node.name not in merger.active and node.name not in finished:
                    merger.add(node.name, node_flows(node, request))

    async def GetFlows(self, request: observer_pb2.GetFlowsRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[observer_pb2.GetFlowsResponse]:
        problem = check_request(request)
        if problem is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            return
        async for response in self.flows(request):
            yield response

    # ----- status --------------------------------------------------------------------------------
    async def _statuses(self) -> list[tuple[Node, observer_pb2.ServerStatusResponse | None]]:
        """Every peer with its ServerStatus (None: unavailable, or its call failed)."""
        async def one(node: Node) -> observer_pb2.ServerStatusResponse | None:
            if not node.available:
                return None
            try:
                reply: observer_pb2.ServerStatusResponse = await node.stub.ServerStatus(
                    observer_pb2.ServerStatusRequest(), timeout=CALL_TIMEOUT_S)
                return reply
            except grpc.RpcError as exc:
                node.last_error = error_message(exc)
                return None
        nodes = self._pool.nodes()
        replies = await asyncio.gather(*(one(n) for n in nodes))
        return list(zip(nodes, replies, strict=True))

    async def ServerStatus(self, request: observer_pb2.ServerStatusRequest,
                           context: grpc.aio.ServicerContext[Any, Any]) -> observer_pb2.ServerStatusResponse:
        return summed_status(await self._statuses())

    async def GetNodes(self, request: observer_pb2.GetNodesRequest,
                       context: grpc.aio.ServicerContext[Any, Any]) -> observer_pb2.GetNodesResponse:
        nodes = []
        for node, status in await self._statuses():
            entry = observer_pb2.Node(name=node.name, address=node.peer.address)
            entry.tls.enabled = node.peer.tls_server_name is not None
            entry.tls.server_name = node.peer.tls_server_name or ""
            if not node.available:
                entry.state = relay_pb2.NODE_UNAVAILABLE
            elif status is None:
                entry.state = relay_pb2.NODE_ERROR
            else:
                entry.state = relay_pb2.NODE_CONNECTED
                entry.version = status.version
                entry.uptime_ns = status.uptime_ns
                entry.num_flows = status.num_flows
                entry.max_flows = status.max_flows
                entry.seen_flows = status.seen_flows
            nodes.append(entry)
        return observer_pb2.GetNodesResponse(nodes=nodes)

    async def GetNamespaces(self, request: observer_pb2.GetNamespacesRequest,
                            context: grpc.aio.ServicerContext[Any, Any]) -> observer_pb2.GetNamespacesResponse:
        async def one(node: Node) -> list[observer_pb2.Namespace]:
            try:
                reply = await node.stub.GetNamespaces(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError:
                return []  # partial results rather than none, as upstream
            return list(reply.namespaces)
        answers = await asyncio.gather(*(one(n) for n in self._pool.nodes() if n.available))
        seen = {(ns.cluster, ns.namespace) for answer in answers for ns in answer}
        return observer_pb2.GetNamespacesResponse(
            namespaces=[observer_pb2.Namespace(cluster=c, namespace=n) for c, n in sorted(seen)])

    async def GetAgentEvents(self, request: observer_pb2.GetAgentEventsRequest,
                             context: grpc.aio.ServicerContext[Any, Any],
                             ) -> AsyncIterator[observer_pb2.GetAgentEventsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetAgentEvents not yet implemented")
        return
        yield  # an async generator

    async def GetDebugEvents(self, request: observer_pb2.GetDebugEventsRequest,
                             context: grpc.aio.ServicerContext[Any, Any],
                             ) -> AsyncIterator[observer_pb2.GetDebugEventsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "GetDebugEvents not yet implemented")
        return
        yield


def summed_status(statuses: list[tuple[Node, observer_pb2.ServerStatusResponse | None]],
                  ) -> observer_pb2.ServerStatusResponse:
    """Upstream relay's sum: flows added up, the oldest uptime, connected/unavailable node counts."""
    response = observer_pb2.ServerStatusResponse(version=VERSION)
    unavailable = [node.name for node, status in statuses if status is None]
    for _, status in statuses:
        if status is None:
            continue
        response.max_flows += status.max_flows
        response.num_flows += status.num_flows
        response.seen_flows += status.seen_flows
        response.uptime_ns = max(response.uptime_ns, status.uptime_ns)
        response.flows_rate += status.flows_rate
    response.num_connected_nodes.value = len(statuses) - len(unavailable)
    response.num_unavailable_nodes.value = len(unavailable)
    response.unavailable_nodes.extend(unavailable[:UNAVAILABLE_REPORT_MAX])
    return response
