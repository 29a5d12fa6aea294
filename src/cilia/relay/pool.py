"""The relay's connections to the nodes' Observers: one gRPC channel per peer, kept connected.

A peer is available while its channel is READY (as upstream's relay: a node that cannot be
reached is skipped and reported, never waited for). Each channel is watched by a task that asks it
to connect whenever it is idle, with gRPC's own reconnect backoff bounded (`RECONNECT_*`) and a
bounded connect timeout, so a node that comes back is used again within seconds. The set of peers
comes from discovery (cilia.relay.discovery) through `sync`: new peers are connected, gone ones
closed, changed addresses reconnected."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc

from cilia.hubble.pb import observer_pb2, observer_pb2_grpc
from cilia.hubble.peer import PeerInfo

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_MS = 3000  # one connection attempt
RECONNECT_INITIAL_MS = 500
RECONNECT_MAX_MS = 5000
PROBE_INTERVAL_S = 2.0


@dataclass(frozen=True)
class TlsClient:
    """How the relay dials TLS peers: the CA that signed their certificates, optionally its own pair."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None


def channel_options() -> list[tuple[str, Any]]:
    return [("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_MS),
            ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
            ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024)]


@dataclass
class Node:
    """A peer and its channel's state. `name` may be learned from the node once it answers."""

    peer: PeerInfo
    channel: grpc.aio.Channel
    state: grpc.ChannelConnectivity = grpc.ChannelConnectivity.IDLE
    connected_since: float | None = None
    last_error: str = ""
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.peer.name

    @property
    def available(self) -> bool:
        return self.state == grpc.ChannelConnectivity.READY

    @property
    def stub(self) -> Any:
        return observer_pb2_grpc.ObserverStub(self.channel)  # type: ignore[no-untyped-call]


def _target(address: str) -> str:
    """gRPC targets: unix:///path and unix:/path as they are; host:port as it is."""
    return address


class NodePool:
    def __init__(self, tls: TlsClient | None = None, probe_interval: float = PROBE_INTERVAL_S) -> None:
        self._nodes: dict[str, Node] = {}  # by address
        self._tls = tls
        self._probe = probe_interval

    def nodes(self) -> list[Node]:
        """Every peer, by name."""
        return sorted(self._nodes.values(), key=lambda n: n.name)

    def _channel(self, peer: PeerInfo) -> grpc.aio.Channel:
        target = _target(peer.address)
        if peer.tls_server_name is not None and self._tls is not None:
            credentials = grpc.ssl_channel_credentials(self._tls.ca, self._tls.key, self._tls.cert)
            options = [*channel_options(), ("grpc.ssl_target_name_override", peer.tls_server_name)]
            return grpc.aio.secure_channel(target, credentials, options)
        return grpc.aio.insecure_channel(target, channel_options())

    async def sync(self, peers: Iterable[PeerInfo]) -> None:
        """Make the pool hold exactly these peers."""
        wanted = {p.address: p for p in peers}
        for address in list(self._nodes):
            node = self._nodes[address]
            if address not in wanted or wanted[address].tls_server_name != node.peer.tls_server_name:
                await self._remove(address)
        for address, peer in wanted.items():
            existing = self._nodes.get(address)
            if existing is None:
                node = Node(peer, self._channel(peer))
                node.watcher = asyncio.get_running_loop().create_task(self._watch(node), name=f"pool-{peer.name}")
                self._nodes[address] = node
                log.info("relay: peer %s at %s added", peer.name, address)
            elif existing.peer.name != peer.name and peer.name != peer.address:
                existing.peer = peer

    async def _remove(self, address: str) -> None:
        node = self._nodes.pop(address)
        log.info("relay: peer %s at %s removed", node.name, address)
        if node.watcher is not None:
            node.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await node.watcher
        await node.channel.close()

    async def _watch(self, node: Node) -> None:
        """Keep the channel trying to connect; record each state it goes through."""
        named = node.peer.name != node.peer.address
        while True:
            state = node.channel.get_state(try_to_connect=True)
            if state != node.state:
                was = node.available
                node.state = state
                if node.available and not was:
                    node.connected_since = time.monotonic()
                    node.last_error = ""
                    log.info("relay: peer %s connected", node.name)
                    if not named:
                        named = await self._learn_name(node)
                elif was and not node.available:
                    node.connected_since = None
                    node.last_error = f"connection {state.name.lower()}"
                    log.warning("relay: peer %s unavailable (%s)", node.name, state.name)
                elif state == grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                    node.last_error = "connection failed"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.channel.wait_for_state_change(state), self._probe)

    async def _learn_name(self, node: Node) -> bool:
        """A peer given by address only: its name from the node itself (cilia agents answer GetNodes)."""
        try:
            reply = await node.stub.GetNodes(observer_pb2.GetNodesRequest(), timeout=3)
        except grpc.RpcError:
            return False
        if len(reply.nodes) == 1 and reply.nodes[0].name:
            node.peer = PeerInfo(reply.nodes[0].name, node.peer.address, node.peer.tls_server_name)
        return True

    async def close(self) -> None:
        for address in list(self._nodes):
            await self._remove(address)
