"""Where the relay finds its nodes; each source keeps the node pool in step with what it knows.

- static: `--peer [NAME=]ADDRESS` flags (one node's unix socket, or a fixed list);
- the node registry: every `cilia/nodes/<name>` record in the cluster's kvstore (etcd), each
  node's Observer address made from its record by a template (`{name}`, `{ipv4}`, `{ipv6}`);
  listed again every few seconds, so nodes that join or whose lease expired are followed;
- Hubble's peer service: `peer.Peer/Notify` of an agent (upstream relay's way), PEER_ADDED /
  DELETED / UPDATED applied as they come, the stream re-opened with a bounded backoff.
A source that fails keeps the pool as it was (its nodes stay, reported unavailable if they are)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import grpc

from cilia.cluster import codec
from cilia.hubble.pb import peer_pb2, peer_pb2_grpc
from cilia.hubble.peer import PeerInfo, peer_name
from cilia.kvstore.api import KeyValue
from cilia.relay.pool import NodePool, channel_options

log = logging.getLogger(__name__)

NODES_PREFIX = codec.NODES_PREFIX
DEFAULT_ADDRESS_TEMPLATE = "{ipv4}:4244"  # upstream's Hubble port on every node
REGISTRY_INTERVAL_S = 2.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0


class DiscoveryError(ValueError):
    pass


def parse_peer(text: str) -> PeerInfo:
    """`n1=unix:///run/cilia/n1/hubble.sock`, `unix:///...` or `host:port` (a bare address's name
    is learned from the node once it answers)."""
    name, sep, address = text.partition("=")
    if not sep:
        name, address = text, text
    if not name or not address:
        raise DiscoveryError(f"--peer {text!r}: expected [NAME=]ADDRESS")
    return PeerInfo(name, address)


class Source(Protocol):
    async def run(self, pool: NodePool) -> None:
        """Keep `pool` in step; runs until cancelled."""


class StaticSource:
    def __init__(self, peers: Iterable[PeerInfo]) -> None:
        self.peers = list(peers)

    async def run(self, pool: NodePool) -> None:
        await pool.sync(self.peers)
        await asyncio.Event().wait()


def registry_peer(key: str, value: bytes, template: str) -> PeerInfo:
    """A node registry record (cilia.cluster's NodeRecord, decoded strictly) as the relay's peer."""
    try:
        record = codec.decode_node(key, value)
    except codec.RecordError as exc:
        raise DiscoveryError(str(exc)) from None
    fields = {"name": record.name, **{family: str(address) for family, address in
                                      (("ipv4", record.ipv4), ("ipv6", record.ipv6)) if address is not None}}
    try:
        address = template.format(**fields)
    except KeyError as exc:
        raise DiscoveryError(f"{key}: the address template needs {exc}, which the record lacks") from None
    return PeerInfo(peer_name(record.name), address)


class KvLister(Protocol):
    """What the registry source needs of cilia.kvstore's KvClient."""

    def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]: ...


class RegistrySource:
    def __init__(self, kv: KvLister, template: str = DEFAULT_ADDRESS_TEMPLATE,
                 interval: float = REGISTRY_INTERVAL_S) -> None:
        self._kv = kv
        self._template = template
        self._interval = interval
        self.last_error = ""
        self._skipped: set[str] = set()

    def list_peers(self) -> list[PeerInfo]:
        """Every registered node; a garbage record is logged (once) and skipped."""
        items, _ = self._kv.list_prefix(NODES_PREFIX)
        peers = []
        for item in items:
            try:
                peers.append(registry_peer(item.key, item.value, self._template))
            except DiscoveryError as exc:
                if item.key not in self._skipped:
                    log.warning("relay: skipping %s", exc)
                    self._skipped.add(item.key)
        return peers

    async def run(self, pool: NodePool) -> None:
        while True:
            try:
                peers = await asyncio.to_thread(self.list_peers)
            except Exception as exc:  # the kvstore is away: keep the nodes we have
                if str(exc) != self.last_error:
                    log.warning("relay: listing the node registry failed: %s", exc)
                self.last_error = str(exc)
            else:
                self.last_error = ""
                await pool.sync(peers)
            await asyncio.sleep(self._interval)


def apply_notification(peers: dict[str, PeerInfo], change: peer_pb2.ChangeNotification) -> None:
    """One peer.Peer notification applied to the peers known by name."""
    if change.type == peer_pb2.PEER_DELETED:
        peers.pop(change.name, None)
    elif change.type in (peer_pb2.PEER_ADDED, peer_pb2.PEER_UPDATED):
        server_name = change.tls.server_name if change.HasField("tls") else None
        peers[change.name] = PeerInfo(change.name, change.address, server_name or None)


class PeerServiceSource:
    def __init__(self, target: str, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self._target = target
        self._sleep = sleep
        self.last_error = ""

    async def run(self, pool: NodePool) -> None:
        backoff = BACKOFF_INITIAL_S
        while True:
            peers: dict[str, PeerInfo] = {}
            try:
                async with grpc.aio.insecure_channel(self._target, channel_options()) as channel:
                    stub = peer_pb2_grpc.PeerStub(channel)  # type: ignore[no-untyped-call]
                    async for change in stub.Notify(peer_pb2.NotifyRequest()):
                        apply_notification(peers, change)
                        await pool.sync(peers.values())
                        backoff = BACKOFF_INITIAL_S
            except grpc.RpcError as exc:
                self.last_error = str(exc)
                log.warning("relay: peer service %s: %s (retrying in %.1f s)", self._target, exc, backoff)
            await self._sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
