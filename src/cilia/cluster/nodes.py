"""The node registry: this node's own record published at `cilia/nodes/<name>` under the node's
lease, and every node's record (this one included) mirrored from the kvstore.

The own record is written again whenever it changes (health) and after the session granted a new
lease (the old lease's keys are gone). When the kvstore is unreachable the record stays pending
and `publish()` is retried by the cluster controller; meanwhile the other nodes keep the last
state they saw (a node is removed from the view only when its key is deleted, i.e. its lease
expired or it left)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from cilia.cluster import codec
from cilia.cluster.model import NodeRecord
from cilia.cluster.table import RecordTable
from cilia.kvstore.api import KvClient, KvError

log = logging.getLogger(__name__)


class LeaseHolder(Protocol):
    """What the publishers need of cilia.kvstore.session.NodeSession."""

    @property
    def lease(self) -> int:
        """The lease held now; raises KvError while none is."""
        ...


class NodeRegistry:
    def __init__(self, kv: KvClient, session: LeaseHolder, local: NodeRecord,
                 clock: Callable[[], float] = time.time) -> None:
        self._kv = kv
        self._session = session
        self._clock = clock
        self._lock = threading.Lock()
        self._local = replace(local, updated=local.updated or clock())
        self._published: tuple[int, NodeRecord] | None = None  # (lease, record) last written
        self.table: RecordTable[NodeRecord] = RecordTable("nodes", codec.decode_node)
        self.last_error = ""

    @property
    def name(self) -> str:
        return self._local.name

    @property
    def local(self) -> NodeRecord:
        with self._lock:
            return self._local

    def set_health(self, health: str, reason: str = "") -> bool:
        """Returns whether the record changed (then it needs publishing)."""
        with self._lock:
            if (self._local.health, self._local.health_reason) == (health, reason):
                return False
            self._local = replace(self._local, health=health, health_reason=reason)
            return True

    def update_local(self, **fields: object) -> None:
        with self._lock:
            self._local = replace(self._local, **fields)  # type: ignore[arg-type]

    @property
    def pending(self) -> bool:
        """The kvstore does not hold the current own record under the current lease."""
        with self._lock:
            return self._published is None or self._published[1] != self._local

    def lease_lost(self, _lease: int = 0) -> None:
        """The session granted a new lease: everything written under the old one is gone."""
        with self._lock:
            self._published = None

    def publish(self) -> bool:
        """Write the own record if pending. False (and `last_error`) when the kvstore failed."""
        with self._lock:
            record = self._local
            published = self._published
        try:
            lease = self._session.lease
            if published == (lease, record):
                return True
            self._kv.put(codec.node_key(record.name), codec.encode_node(record), lease=lease)
        except KvError as exc:
            if self.last_error != str(exc):
                log.warning("node %s: registering in the kvstore failed: %s", record.name, exc)
            self.last_error = str(exc)
            return False
        self.last_error = ""
        with self._lock:
            self._published = (lease, record)
        log.info("node %s registered (lease %x)", record.name, lease)
        return True

    def nodes(self) -> list[NodeRecord]:
        """Every node the kvstore knows, by name; this node as it is now even before it is
        published (or while the kvstore is unreachable)."""
        by_name = {r.name: r for r in self.table.snapshot().values()}
        by_name[self._local.name] = self.local
        return [by_name[name] for name in sorted(by_name)]

    def remote_nodes(self) -> list[NodeRecord]:
        return [r for r in self.nodes() if r.name != self._local.name]
