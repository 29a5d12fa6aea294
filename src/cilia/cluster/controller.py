"""The cluster controller: one thread that keeps the kvstore and this node's datapath in step.

Outwards: this node's record (NodeRegistry) and its endpoints' ipcache entries (IpcachePublisher)
are written, and written again after a kvstore outage or a new lease, until nothing is pending.
Inwards: the mirrored node and ipcache tables become a `ClusterView` (`build_view`, pure) handed
to `ClusterDatapath.sync_cluster` whenever it changed; identities allocated on other nodes
(the allocator's subscribe) reach the policy engine as one `identities_changed()` per batch.
After each round in which the mirrored tables changed and the datapath holds the view (its routes
and ipcache entries for the remote endpoints), `tables_changed()` tells the service engine, so a
remote pod becomes a backend only once it is reachable.

Every trigger only sets a flag and wakes the thread, which waits `debounce` seconds so a burst
(a full resync, 100 pods created at once) becomes one sync. The view is not pushed before both
tables were listed once: a restarted agent with the kvstore down keeps the remote entries its
predecessor left in the pinned maps instead of wiping them with an empty view.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cilia.cluster.ipcache import IpcachePublisher
from cilia.cluster.model import (
    ClusterView,
    IPAddress,
    IpcacheRecord,
    NodeRecord,
    RemoteEndpoint,
    RemoteEndpoints,
    RoutingMode,
)
from cilia.cluster.nodes import NodeRegistry

log = logging.getLogger(__name__)
_V6 = 1 << 128  # sorts IPv6 after IPv4


class ClusterDatapath(Protocol):
    """cilia.agent.datapath_adapter.DatapathAdapter implements it."""

    def sync_cluster(self, view: ClusterView) -> object: ...


def build_view(local_node: str, routing_mode: RoutingMode, nodes: Iterable[NodeRecord],
               ipcache: Iterable[IpcacheRecord], local_ips: Iterable[IPAddress] = ()) -> ClusterView:
    """What the datapath needs: the other nodes, and the endpoint IPs hosted by them.

    An entry counts only while its node is registered (both live under the same lease; this
    keeps a half-expired node out), never for an IP this node hosts itself (a conflicting record
    must not redirect local traffic). The tunnel endpoint is the hosting node's underlay IPv4 as
    the node record says (tunnel mode only)."""
    remote = {n.name: n for n in nodes if n.name != local_node}
    mine = set(local_ips)
    tunnel_mode = routing_mode is RoutingMode.TUNNEL

    def entries() -> Iterator[tuple[IPAddress, RemoteEndpoint]]:
        # in address order (IPv4 first), as a generator: no list of 10,000 pairs next to the mapping
        for record in sorted(ipcache, key=lambda r: int(r.ip) | (_V6 if r.ip.version == 6 else 0)):
            node = remote.get(record.node)
            if node is None or record.ip in mine:
                continue
            tunnel = (node.ipv4 or record.node_ipv4) if tunnel_mode else None
            yield record.ip, RemoteEndpoint(record.identity, tunnel)

    endpoints = RemoteEndpoints(entries())
    return ClusterView(routing_mode=routing_mode, local_node=local_node,
                       nodes=tuple(remote[name] for name in sorted(remote)), remote_endpoints=endpoints)


@dataclass
class ControllerStats:
    syncs: int = 0  # sync_cluster calls
    last_sync_seconds: float = 0.0
    last_sync_at: float = 0.0  # unix time
    identity_changes: int = 0  # identities_changed() calls made for remote identities
    errors: int = 0
    last_error: str = ""


class ClusterController:
    def __init__(
        self,
        *,
        registry: NodeRegistry,
        ipcache: IpcachePublisher,
        datapath: ClusterDatapath,
        routing_mode: RoutingMode,
        local_ips: Callable[[], Iterable[IPAddress]],
        identities_changed: Callable[[], object] | None = None,
        debounce: float = 0.05,
        retry_interval: float = 1.0,
        extra_publish: Callable[[], bool] | None = None,
        tables_changed: Callable[[], object] | None = None,
    ) -> None:
        self._registry = registry
        self._ipcache = ipcache
        self._datapath = datapath
        self._routing_mode = routing_mode
        self._local_ips = local_ips
        self._identities_changed = identities_changed
        self._debounce = debounce
        self._retry_interval = retry_interval
        self._extra_publish = extra_publish  # e.g. confirming a pod CIDR claimed while offline
        self._extra_done = extra_publish is None
        self._tables_changed = tables_changed
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._view_dirty = True
        self._identities_dirty = False
        self._last_view: ClusterView | None = None
        self._thread: threading.Thread | None = None
        self._stale_checked = -1
        self.stats = ControllerStats()
        registry.table.set_listener(self.view_changed)
        ipcache.table.set_listener(self.view_changed)

    # ----- triggers (any thread) -----------------------------------------------------------------
    def view_changed(self) -> None:
        with self._lock:
            self._view_dirty = True
        self._wake.set()

    def publish_needed(self, _lease: int = 0) -> None:
        """A local change (or a new lease): publishing has work to do."""
        self._wake.set()

    def identity_event(self, *_args: object) -> None:
        """The allocator saw an identity appear or go (on any node)."""
        with self._lock:
            self._identities_dirty = True
        self._wake.set()

    # ----- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cilia-cluster", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._retry_interval)
            if self._stop.is_set():
                return
            self._stop.wait(self._debounce)  # coalesce a burst into one round
            self._wake.clear()
            try:
                self.step()
            except Exception as exc:  # never let the thread die: log, count, retry next round
                log.exception("cluster controller round failed")
                self.stats.errors += 1
                self.stats.last_error = str(exc)

    def step(self) -> bool:
        """One round (also called directly by tests). Returns whether everything is done."""
        done = self._publish()
        with self._lock:
            identities, self._identities_dirty = self._identities_dirty, False
        if identities and self._identities_changed is not None:
            self._identities_changed()
            self.stats.identity_changes += 1
        return self._push_view() and done

    def _publish(self) -> bool:
        registered = self._registry.publish()
        published = self._ipcache.sync()
        if published and self._ipcache.table.synced and self._stale_checked != self._ipcache.lease:
            self._ipcache.remove_stale()  # once per lease: what an earlier run left behind
            self._stale_checked = self._ipcache.lease
        if not self._extra_done and self._extra_publish is not None:
            try:
                self._extra_done = self._extra_publish()
            except Exception as exc:  # a KvError: next round
                log.debug("cluster controller: %s", exc)
        return registered and published and self._extra_done

    def _push_view(self) -> bool:
        with self._lock:
            dirty, self._view_dirty = self._view_dirty, False
        if not dirty:
            return True
        if not (self._registry.table.synced and self._ipcache.table.synced):
            with self._lock:
                self._view_dirty = True
            return False
        view = build_view(self._registry.name, self._routing_mode, self._registry.nodes(),
                          self._ipcache.table.values(), self._local_ips())
        if view == self._last_view:
            self._notify_tables()  # e.g. an IP now named for another pod: the view is the same
            return True
        started = time.monotonic()
        try:
            self._datapath.sync_cluster(view)
        except Exception as exc:
            log.exception("programming the cluster view into the datapath failed; retrying")
            with self._lock:
                self._view_dirty = True
            self.stats.errors += 1
            self.stats.last_error = f"sync_cluster: {exc}"
            if self._registry.set_health("degraded", f"datapath sync failed: {exc}"):
                self._wake.set()
            return False
        if self._registry.set_health("ok"):
            self._wake.set()
        self._last_view = view
        self.stats.syncs += 1
        self.stats.last_sync_seconds = time.monotonic() - started
        self.stats.last_sync_at = time.time()
        self._notify_tables()
        log.debug("cluster view: %d remote nodes, %d remote endpoints", len(view.nodes),
                  len(view.remote_endpoints))
        return True

    def _notify_tables(self) -> None:
        if self._tables_changed is None:
            return
        try:
            self._tables_changed()
        except Exception as exc:  # the listener's failure is its own; the view stays pushed
            log.exception("cluster controller: the tables-changed listener failed")
            self.stats.errors += 1
            self.stats.last_error = f"tables_changed: {exc}"

    @property
    def view(self) -> ClusterView | None:
        return self._last_view

    def pending(self) -> bool:
        return self._registry.pending or self._ipcache.pending

