"""ClusterIPs for Services that name none (the apiserver's job in a real cluster), persisted."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cilia.jsonfile import read_json, write_json
from cilia.lb.model import IPAddress, ServiceName


class ClusterIpAllocator:
    """One address per service from the first configured range, kept across restarts."""

    def __init__(self, cidrs: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network], state_file: Path) -> None:
        self._cidrs = list(cidrs)
        self._state_file = state_file
        raw: dict[str, str] = read_json(state_file, {})
        self._given = {name: ipaddress.ip_address(ip) for name, ip in raw.items()}

    def get(self, service: ServiceName, taken: set[IPAddress]) -> IPAddress | None:
        key = str(service)
        if key in self._given:
            return self._given[key]
        used = taken | set(self._given.values())
        for cidr in self._cidrs[:1]:  # single stack by default, the first family configured
            for offset, host in enumerate(cidr.hosts()):
                address = ipaddress.ip_address(str(host))
                if offset == 0:
                    continue  # .1 is kept for the `kubernetes` service, as the apiserver does
                if address not in used:
                    self._given[key] = address
                    self._save()
                    return address
                if offset > 1 << 20:
                    break
        return None

    def release(self, service: ServiceName) -> None:
        if self._given.pop(str(service), None) is not None:
            self._save()

    def _save(self) -> None:
        write_json(self._state_file, {k: str(v) for k, v in self._given.items()})
