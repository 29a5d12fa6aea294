"""What cilia needs of a key-value store, and nothing more: etcd's v3 semantics (revisions, leases,
compare-and-swap on create/mod revision, prefix watches that can be resumed from a revision and
report compaction). `cilia.kvstore.etcd.EtcdClient` implements it over a real etcd cluster,
`cilia.kvstore.memory.MemoryKv` in memory for unit tests of the logic built on top.

Keys are text under one prefix per concern (docs/cluster.md lists them); values are bytes
(JSON documents, decoded by their owner, which logs and skips what it cannot read)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


class KvError(Exception):
    """The store could not be reached or did not answer in time (every member tried)."""


class Compacted(KvError):
    """A watch asked for revisions the store has compacted away: list again (full resync)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted up to {compact_revision}")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    key: str
    value: bytes  # empty for a delete
    mod_revision: int


@dataclass(frozen=True)
class KvStatus:
    reachable: bool
    endpoint: str  # the member this client talks to now
    member_id: str = ""
    leader_id: str = ""
    revision: int = 0
    raft_index: int = 0
    raft_applied_index: int = 0  # lag = raft_index - raft_applied_index (0 when unknown)
    error: str = ""


@dataclass(frozen=True)
class Cmp:
    """One condition of a transaction: the key's mod_revision equals `mod_revision` (0: the key
    does not exist). With `prefix`, every key under `key` must satisfy it (0: none exists)."""

    key: str
    mod_revision: int
    prefix: bool = False


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


WatchCallback = Callable[[list[WatchEvent], int], None]  # events of one response, its header revision
ErrorCallback = Callable[[Exception], None]  # the watch ended (KvError, Compacted): resume or resync
Cancel = Callable[[], None]


class KvClient(Protocol):
    def get(self, key: str) -> KeyValue | None: ...

    def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under `prefix` and the store revision the read saw (watch from revision + 1)."""
        ...

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Returns the revision of the write."""
        ...

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Write only if the key does not exist (compare create_revision == 0)."""
        ...

    def update_if(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        """Write only if the key's mod_revision is still `mod_revision` (compare-and-swap)."""
        ...

    def txn(self, compares: Sequence[Cmp], ops: Sequence[Put | Delete]) -> int:
        """All `ops` at one revision if every compare holds: that revision (the store's for no
        ops); else nothing happens and 0 (so it reads as a bool: did it commit?)."""
        ...

    def delete(self, key: str) -> bool: ...

    def delete_if(self, key: str, mod_revision: int) -> bool: ...

    def delete_prefix(self, prefix: str) -> int: ...

    def grant_lease(self, ttl_seconds: int) -> int: ...

    def keepalive(self, lease: int) -> bool:
        """Refresh once; False when the store no longer knows the lease (it expired)."""
        ...

    def revoke(self, lease: int) -> None: ...

    def watch_prefix(self, prefix: str, start_revision: int, on_events: WatchCallback,
                     on_error: ErrorCallback) -> Cancel:
        """Events from `start_revision` on, in order, from a background thread. When the watch
        breaks (member lost, compaction), `on_error` is called once and the watch is over."""
        ...

    def status(self) -> KvStatus: ...

    def close(self) -> None: ...
