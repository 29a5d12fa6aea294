"""The cluster ipcache: every local endpoint's IPs published at `cilia/ipcache/<ip>` ->
IpcacheRecord (identity, this node, its underlay addresses, the pod) under the node's lease, and
everyone's entries mirrored from the kvstore (`table`).

The publisher keeps what it wants (`set_endpoints`) apart from what the kvstore holds under the
current lease, so a write that failed (kvstore unreachable) or a lost lease is made good by the
next `sync()`; the cluster controller calls it until nothing is pending. Entries of this node the
kvstore still holds from an earlier run (endpoints deleted while the agent was down, under the
same or an expired lease) are deleted once the mirror is synced (`remove_stale`)."""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterable

from cilia.cluster import codec
from cilia.cluster.model import IPAddress, IpcacheRecord
from cilia.cluster.nodes import LeaseHolder
from cilia.cluster.table import RecordTable
from cilia.endpoint.record import EndpointRecord
from cilia.kvstore.api import KvClient, KvError

log = logging.getLogger(__name__)


def endpoint_entries(records: Iterable[EndpointRecord], node: str, node_ipv4: ipaddress.IPv4Address | None,
                     node_ipv6: ipaddress.IPv6Address | None) -> dict[IPAddress, IpcacheRecord]:
    """The ipcache records of the local endpoints (one per address)."""
    entries: dict[IPAddress, IpcacheRecord] = {}
    for record in records:
        for text in (record.ipv4, record.ipv6):
            if not text:
                continue
            ip = ipaddress.ip_address(text)
            entries[ip] = IpcacheRecord(ip=ip, identity=record.identity, node=node, node_ipv4=node_ipv4,
                                        node_ipv6=node_ipv6, namespace=record.pod_namespace, pod=record.pod_name)
    return entries


class IpcachePublisher:
    def __init__(self, kv: KvClient, session: LeaseHolder, node: str) -> None:
        self._kv = kv
        self._session = session
        self._node = node
        self._lock = threading.Lock()
        self._desired: dict[IPAddress, IpcacheRecord] = {}
        self._written: dict[IPAddress, IpcacheRecord] = {}  # held by the kvstore under `_lease`
        self._lease = 0
        self.table: RecordTable[IpcacheRecord] = RecordTable("ipcache", codec.decode_ipcache)
        self.last_error = ""

    def set_desired(self, entries: dict[IPAddress, IpcacheRecord]) -> None:
        with self._lock:
            self._desired = dict(entries)

    def desired(self) -> dict[IPAddress, IpcacheRecord]:
        with self._lock:
            return dict(self._desired)

    @property
    def lease(self) -> int:
        """The lease the held entries were written under (0: none yet)."""
        with self._lock:
            return self._lease

    @property
    def pending(self) -> bool:
        with self._lock:
            return self._desired != self._written

    def lease_lost(self, _lease: int = 0) -> None:
        with self._lock:
            self._written.clear()

    def sync(self) -> bool:
        """Write what is wanted and not held, delete what is held and no longer wanted. Stops at
        the first kvstore error (False); what was done stays done."""
        try:
            lease = self._session.lease
            with self._lock:
                if lease != self._lease:
                    self._written.clear()  # written under another lease: gone or going
                    self._lease = lease
                desired, written = dict(self._desired), dict(self._written)
            for ip, record in desired.items():
                if written.get(ip) != record:
                    self._kv.put(codec.ipcache_key(ip), codec.encode_ipcache(record), lease=lease)
                    with self._lock:
                        self._written[ip] = record
            for ip in [ip for ip in written if ip not in desired]:
                self._kv.delete(codec.ipcache_key(ip))
                with self._lock:
                    self._written.pop(ip, None)
        except KvError as exc:
            if self.last_error != str(exc):
                log.warning("node %s: publishing ipcache entries failed: %s", self._node, exc)
            self.last_error = str(exc)
            return False
        self.last_error = ""
        return True

    def remove_stale(self) -> int:
        """Delete this node's entries the kvstore holds but nobody wants (from a previous run)."""
        if not self.table.synced:
            return 0
        with self._lock:
            desired = set(self._desired)
        stale = [key for key, record in self.table.snapshot().items()
                 if record.node == self._node and record.ip not in desired]
        removed = 0
        for key in stale:
            try:
                self._kv.delete(key)
                removed += 1
            except KvError as exc:
                log.warning("node %s: removing stale ipcache entry %s failed: %s", self._node, key, exc)
                break
        if removed:
            log.info("node %s: removed %d stale ipcache entries of an earlier run", self._node, removed)
        return removed
