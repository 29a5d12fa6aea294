"""Hubble's peer.Peer service, served by every agent next to its Observer: `Notify` streams the
Hubble peers of the cluster (each node's name, Observer address and TLS server name) as
PEER_ADDED, then each change (PEER_ADDED / PEER_DELETED / PEER_UPDATED) as it happens. An upstream
relay, `hubble watch peers` and cilia-relay's `--peer-service` read it.

Where the peers come from is the caller's: a function listing them (the node alone, or the
cluster's node registry). It is polled, so a registry needs no change callbacks; the diff between
two listings makes the notifications."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from cilia.hubble.pb import peer_pb2, peer_pb2_grpc

POLL_INTERVAL_S = 1.0
DEFAULT_CLUSTER = "default"


@dataclass(frozen=True, order=True)
class PeerInfo:
    """One Hubble peer: where its Observer is, and the TLS name to check (None: plaintext)."""

    name: str
    address: str
    tls_server_name: str | None = None


def peer_name(node: str, cluster: str = DEFAULT_CLUSTER) -> str:
    """As upstream: the node name, with `<cluster>/` before it unless the cluster is `default`."""
    return node if cluster == DEFAULT_CLUSTER else f"{cluster}/{node}"


def tls_server_name(node: str, cluster: str = DEFAULT_CLUSTER) -> str:
    """The name upstream agents' Hubble certificates carry: <node>.<cluster>.hubble-grpc.cilium.io."""
    return f"{node.replace('.', '-')}.{cluster}.hubble-grpc.cilium.io"


def notification(peer: PeerInfo, kind: int) -> peer_pb2.ChangeNotification:
    message = peer_pb2.ChangeNotification(name=peer.name, address=peer.address, type=kind)  # type: ignore[arg-type]
    if peer.tls_server_name is not None:
        message.tls.server_name = peer.tls_server_name
    return message


def changes(before: dict[str, PeerInfo], after: Iterable[PeerInfo]) -> tuple[dict[str, PeerInfo],
                                                                              list[peer_pb2.ChangeNotification]]:
    """The notifications that take a client from `before` to `after` (by name), and the new state."""
    now = {p.name: p for p in after}
    out = [notification(before[name], peer_pb2.PEER_DELETED) for name in sorted(set(before) - set(now))]
    for name in sorted(now):
        if name not in before:
            out.append(notification(now[name], peer_pb2.PEER_ADDED))
        elif before[name] != now[name]:
            out.append(notification(now[name], peer_pb2.PEER_UPDATED))
    return now, out


class PeerService(peer_pb2_grpc.PeerServicer):
    def __init__(self, list_peers: Callable[[], Iterable[PeerInfo]], poll_interval: float = POLL_INTERVAL_S) -> None:
        self._list = list_peers
        self._interval = poll_interval

    async def Notify(self, request: peer_pb2.NotifyRequest,
                     context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[peer_pb2.ChangeNotification]:
        known: dict[str, PeerInfo] = {}
        while True:  # until the client goes away (the call is cancelled)
            peers = await asyncio.to_thread(lambda: list(self._list()))
            known, out = changes(known, peers)
            for message in out:
                yield message
            await asyncio.sleep(self._interval)


def cluster_peers(nodes: Iterable[tuple[str, str | None]], listen_address: str | None, tls: bool,
                  socket_of: Callable[[str], str]) -> list[PeerInfo]:
    """The cluster's nodes (name, underlay IPv4) as Hubble peers. As upstream, every agent serves on
    the same port: with a TCP listen address a peer is `<its IPv4>:<port>`; without one (each
    agent on its unix socket only, as in the lab, all on one machine) it is its socket."""
    port = listen_address.rsplit(":", 1)[1] if listen_address and ":" in listen_address else None
    peers = []
    for name, ipv4 in nodes:
        address = f"{ipv4}:{port}" if port and ipv4 else f"unix://{socket_of(name)}"
        peers.append(PeerInfo(peer_name(name), address, tls_server_name(name) if tls and port else None))
    return sorted(peers)
