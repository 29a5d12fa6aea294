"""Per-node pod address allocation (IPv4 and IPv6), persisted so a restarted agent keeps it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cilia.jsonfile import read_json, write_json

_SCAN_LIMIT = 1 << 16  # bounded search for a free address even in a huge IPv6 range


class IpamError(Exception):
    """A request IPAM cannot honour; the message names the field and the address."""


class IpamExhausted(IpamError):
    """No free address is left in a pod CIDR."""


@dataclass(frozen=True)
class Allocation:
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None


class Ipam:
    def __init__(
        self,
        ipv4_cidr: ipaddress.IPv4Network | None,
        ipv6_cidr: ipaddress.IPv6Network | None,
        state_file: Path,
    ) -> None:
        self.ipv4_cidr = ipv4_cidr
        self.ipv6_cidr = ipv6_cidr
        self._state_file = state_file
        state = read_json(state_file, {"owners": {}, "cursor4": 0, "cursor6": 0})
        self._owners: dict[str, dict[str, str | None]] = state["owners"]
        self._cursor = {4: int(state.get("cursor4", 0)), 6: int(state.get("cursor6", 0))}

    @property
    def router_ipv4(self) -> ipaddress.IPv4Address | None:
        return self.ipv4_cidr.network_address + 1 if self.ipv4_cidr else None

    @property
    def router_ipv6(self) -> ipaddress.IPv6Address | None:
        return self.ipv6_cidr.network_address + 1 if self.ipv6_cidr else None

    def _used(self, version: int) -> set[str]:
        key = "ipv4" if version == 4 else "ipv6"
        return {str(entry[key]) for entry in self._owners.values() if entry.get(key)}

    def _reserved(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> set[str]:
        reserved = {str(network.network_address), str(network.network_address + 1)}
        if network.version == 4:
            reserved.add(str(network.broadcast_address))
        return reserved

    def _pick(
        self,
        network: ipaddress.IPv4Network | ipaddress.IPv6Network,
        requested: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
        field: str,
    ) -> str:
        used = self._used(network.version) | self._reserved(network)
        if requested is not None:
            if requested not in network:
                raise IpamError(f"{field}: {requested} is outside the node's pod CIDR {network}")
            if str(requested) in used:
                raise IpamError(f"{field}: {requested} is already allocated or reserved")
            return str(requested)
        size = network.num_addresses
        start = self._cursor[network.version]
        for step in range(min(size, _SCAN_LIMIT)):
            offset = (start + step) % size
            candidate = str(network.network_address + offset)
            if candidate not in used:
                # Rotate: a just-released address is not handed out again at once.
                self._cursor[network.version] = (offset + 1) % size
                return candidate
        raise IpamExhausted(f"pod CIDR {network} has no free address ({len(used)} in use)")

    def allocate(
        self,
        owner: str,
        *,
        ipv4: ipaddress.IPv4Address | None = None,
        ipv6: ipaddress.IPv6Address | None = None,
    ) -> Allocation:
        """Idempotent per owner: the same owner gets the same addresses back."""
        if owner in self._owners:
            return self._allocation(self._owners[owner])
        if ipv4 is not None and self.ipv4_cidr is None:
            raise IpamError(f"requested IPv4 {ipv4}: this node has no IPv4 pod CIDR")
        if ipv6 is not None and self.ipv6_cidr is None:
            raise IpamError(f"requested IPv6 {ipv6}: this node has no IPv6 pod CIDR")
        entry: dict[str, str | None] = {
            "ipv4": self._pick(self.ipv4_cidr, ipv4, "ipv4") if self.ipv4_cidr else None,
            "ipv6": self._pick(self.ipv6_cidr, ipv6, "ipv6") if self.ipv6_cidr else None,
        }
        self._owners[owner] = entry
        self._save()
        return self._allocation(entry)

    def release(self, owner: str) -> bool:
        if self._owners.pop(owner, None) is None:
            return False
        self._save()
        return True

    def allocations(self) -> dict[str, Allocation]:
        return {owner: self._allocation(entry) for owner, entry in self._owners.items()}

    def owner_of(self, address: str) -> str | None:
        for owner, entry in self._owners.items():
            if address in (entry.get("ipv4"), entry.get("ipv6")):
                return owner
        return None

    @staticmethod
    def _allocation(entry: dict[str, str | None]) -> Allocation:
        v4, v6 = entry.get("ipv4"), entry.get("ipv6")
        return Allocation(
            ipaddress.IPv4Address(v4) if v4 else None,
            ipaddress.IPv6Address(v6) if v6 else None,
        )

    def _save(self) -> None:
        write_json(
            self._state_file,
            {"owners": self._owners, "cursor4": self._cursor[4], "cursor6": self._cursor[6]},
        )
