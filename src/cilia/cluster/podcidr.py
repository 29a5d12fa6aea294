"""Pod CIDRs from a cluster pool: each node claims one /mask of the pool in the kvstore and keeps it.

`first_free` is the pure allocator (the lowest /mask of the pool overlapping nothing taken).
`PodCidrClaimer` claims with a create (compare create_revision == 0) at
`cilia/podcidrs/v4|v6/<a.b.c.d_len>` -> `{"node": name}`, without a lease: a claim survives the
node's restarts and downtime, so its pods keep their addresses. A node that restarts finds its own
claim again (by listing the claims) before it would take a new one, and keeps the last claim in a
local file so it can start with the kvstore unreachable. Two nodes racing for the same CIDR: one
create wins, the other lists again and takes the next free one. Other nodes' advertised pod CIDRs
(static ones from --ipv4-pod-cidr, read from their node records) count as taken too.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from pathlib import Path

from cilia.cluster import codec
from cilia.cluster.codec import RecordError
from cilia.cluster.model import Network
from cilia.jsonfile import read_json, write_json
from cilia.kvstore.api import KvClient, KvError

log = logging.getLogger(__name__)
CLAIM_ATTEMPTS = 64  # bounded: each lost race means another node took a CIDR, so this is plenty


class PoolExhausted(Exception):
    """No /mask of the pool is free."""


def first_free(pool: Network, mask: int, taken: Iterable[Network]) -> Network | None:
    """The lowest subnet of `pool` with prefix length `mask` that overlaps none of `taken`.

    Jumps past each taken range instead of enumerating subnets, so a /8 pool of /64s costs
    O(len(taken)) steps, not 2^56."""
    if not pool.prefixlen <= mask <= pool.max_prefixlen:
        raise ValueError(f"mask size /{mask} does not fit the pool {pool}")
    step = 1 << (pool.max_prefixlen - mask)
    ranges = sorted((int(t.network_address), int(t.broadcast_address)) for t in taken if t.version == pool.version)
    start, last = int(pool.network_address), int(pool.broadcast_address)
    candidate = start
    for low, high in ranges:
        if candidate + step - 1 < low:
            break  # the candidate ends before this (and every later) taken range
        if high >= candidate:
            # overlaps (or lies past) the candidate: move to the first aligned block after it
            candidate = start + ((high + 1 - start + step - 1) // step) * step
    if candidate + step - 1 > last:
        return None
    return ipaddress.ip_network((candidate, mask))


class PodCidrClaimer:
    """This node's pod CIDR per family from the cluster pool, claimed in the kvstore."""

    def __init__(self, kv: KvClient, node: str, cache_file: Path) -> None:
        self._kv = kv
        self._node = node
        self._cache_file = cache_file
        self.from_cache = False  # the last claim() answered from the cache (the kvstore was down)

    def claim(self, pool: Network, mask: int) -> Network:
        """This node's CIDR of `pool`: its existing claim, else a new one. With the kvstore
        unreachable, the claim cached by the last successful start (if it belongs to this pool)."""
        self.from_cache = False
        try:
            cidr = self._claim(pool, mask)
        except KvError as exc:
            cached = self._cached(pool, mask)
            if cached is None:
                raise KvError(f"cannot claim a /{mask} of the cluster pool {pool}: kvstore unreachable "
                              f"({exc}) and no claim cached in {self._cache_file}") from exc
            log.warning("kvstore unreachable (%s): using the cached pod CIDR %s; the claim is checked "
                        "when the kvstore is back", exc, cached)
            self.from_cache = True
            return cached
        self._save(cidr)
        return cidr

    def confirm(self, cidr: Network) -> bool:
        """Make sure the claim of `cidr` is in the kvstore (after starting from the cache, or after a
        person deleted it). False when another node holds it now: logged loudly, nothing changed."""
        key = codec.podcidr_key(cidr)
        current = self._kv.get(key)
        if current is None:
            if self._kv.create(key, codec.encode_claim(self._node)):
                log.info("pod CIDR %s: claim written again", cidr)
                return True
            current = self._kv.get(key)
            if current is None:
                return False
        try:
            _, owner = codec.decode_claim(current.key, current.value)
        except RecordError as exc:
            log.error("pod CIDR claim unreadable, not touched: %s", exc)
            return False
        if owner != self._node:
            log.error("pod CIDR %s is used by this node but claimed by node %s in the kvstore", cidr, owner)
            return False
        return True

    # ----- internals ---------------------------------------------------------------------------------
    def _claim(self, pool: Network, mask: int) -> Network:
        for _ in range(CLAIM_ATTEMPTS):
            claims = self._claims(pool.version)
            mine = sorted((c for c, owner in claims.items() if owner == self._node
                           and c.prefixlen == mask and c.subnet_of(pool)),  # type: ignore[arg-type]
                          key=lambda c: int(c.network_address))
            cached = self._cached(pool, mask)
            if cached is not None and cached in mine:
                return cached
            if mine:
                return mine[0]
            if cached is not None and cached not in claims and not self._overlaps_nodes(cached):
                candidate: Network | None = cached  # reclaim what we had (the claim was lost)
            else:
                candidate = first_free(pool, mask, [*claims, *self._node_cidrs()])
            if candidate is None:
                raise PoolExhausted(f"no free /{mask} left in the cluster pool {pool} "
                                    f"({len(claims)} CIDRs claimed)")
            if self._kv.create(codec.podcidr_key(candidate), codec.encode_claim(self._node)):
                log.info("claimed pod CIDR %s from the cluster pool %s", candidate, pool)
                return candidate
            log.info("pod CIDR %s was claimed by another node meanwhile; trying the next one", candidate)
        raise PoolExhausted(f"could not claim a /{mask} of {pool} in {CLAIM_ATTEMPTS} attempts")

    def _claims(self, version: int) -> dict[Network, str]:
        entries, _revision = self._kv.list_prefix(codec.podcidr_prefix(version))
        claims: dict[Network, str] = {}
        for entry in entries:
            try:
                cidr = codec.decode_claim_key(entry.key)
            except RecordError as exc:
                log.warning("skipping a pod CIDR claim: %s", exc)
                continue
            try:
                claims[cidr] = codec.decode_claim(entry.key, entry.value)[1]
            except RecordError as exc:
                # the key names a CIDR, so it stays taken (a create of it would fail anyway)
                log.warning("pod CIDR claim with an unreadable owner, counted as taken: %s", exc)
                claims[cidr] = ""
        return claims

    def _node_cidrs(self) -> list[Network]:
        """Pod CIDRs other nodes advertise (static or pooled): never hand those out."""
        entries, _revision = self._kv.list_prefix(codec.NODES_PREFIX)
        cidrs: list[Network] = []
        for entry in entries:
            try:
                record = codec.decode_node(entry.key, entry.value)
            except RecordError:
                continue  # logged by the node registry's watch
            if record.name != self._node:
                cidrs.extend(record.pod_cidrs)
        return cidrs

    def _overlaps_nodes(self, cidr: Network) -> bool:
        return any(c.version == cidr.version and c.overlaps(cidr) for c in self._node_cidrs())

    def _cached(self, pool: Network, mask: int) -> Network | None:
        text = self._read_cache().get(f"v{pool.version}")
        if not isinstance(text, str):
            return None
        try:
            cidr = ipaddress.ip_network(text, strict=True)
        except ValueError:
            return None
        if cidr.version != pool.version or cidr.prefixlen != mask or not cidr.subnet_of(pool):  # type: ignore[arg-type]
            return None  # the pool or mask changed: the old claim does not apply
        return cidr

    def _read_cache(self) -> dict[str, object]:
        try:
            state = read_json(self._cache_file, {})
        except (OSError, ValueError) as exc:  # a damaged cache is no claim: etcd has the truth
            log.warning("pod CIDR cache %s unreadable (%s); ignored", self._cache_file, exc)
            return {}
        return state if isinstance(state, dict) else {}

    def _save(self, cidr: Network) -> None:
        state = self._read_cache()
        if state.get(f"v{cidr.version}") != str(cidr):
            state[f"v{cidr.version}"] = str(cidr)
            write_json(self._cache_file, state)
