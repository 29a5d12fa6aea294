"""BPF map entries as the API shows them: pure functions from decoded (typed) entries to JSON rows.

The one place map dumps are rendered (`cilia bpf ... list`): addresses with `cilia.hostport`,
protocols with `cilia.ipproto`, drop reasons by name. The datapath adapter only decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cilia import ipproto
from cilia.hostport import host_port
from cilia.maps import lb as lbm
from cilia.maps.addr import IPAddress
from cilia.maps.ct import CtEntry, CtTuple
from cilia.maps.direction import TrafficDirection
from cilia.maps.endpoints import EndpointInfo
from cilia.maps.ipcache import IpcacheValue, Prefix
from cilia.maps.metrics import MetricsKey
from cilia.maps.policy import InstalledEntries
from cilia.monitor.events import DROP_REASONS
from cilia.policy.mapstate import ALLOW, REDIRECT, REDIRECT_DNS

Row = dict[str, Any]
RuleLookup = Callable[[int], dict[str, Any] | None]
_SERVICE_FLAGS = ((lbm.SVC_F_EXTERNAL, "external"), (lbm.SVC_F_AFFINITY, "affinity"), (lbm.SVC_F_MAGLEV, "maglev"))


def ct_rows(entries: Iterable[tuple[CtTuple, CtEntry]], now: float) -> list[Row]:
    """`now` in seconds of CLOCK_MONOTONIC, the clock of the entries' expiry."""
    return [
        {
            "proto": ipproto.name_of(key.protocol),
            "source": host_port(key.source, key.source_port),
            "destination": host_port(key.destination, key.destination_port),
            "state": entry.state,
            "expires_in": max(0, int(entry.expires - now)),
            "tx_packets": entry.tx_packets,
            "tx_bytes": entry.tx_bytes,
            "rx_packets": entry.rx_packets,
            "rx_bytes": entry.rx_bytes,
            "src_identity": entry.src_identity,
        }
        for key, entry in entries
    ]


def ipcache_rows(entries: Mapping[Prefix, IpcacheValue]) -> list[Row]:
    return [
        # the tunnel endpoint as the address it is (None: not tunnelled), not the map's raw word
        {"prefix": str(prefix), "identity": value.identity,
         "tunnel_endpoint": str(tunnel) if (tunnel := value.tunnel_address) is not None else None}
        for prefix, value in sorted(entries.items(), key=lambda kv: str(kv[0]))
    ]


def endpoint_rows(entries: Mapping[IPAddress, EndpointInfo]) -> list[Row]:
    return [
        {"ip": str(address), "endpoint_id": info.endpoint_id, "ifindex": info.ifindex, "mac": info.mac,
         "lxc_mac": info.lxc_mac, "identity": info.identity}
        for address, info in entries.items()
    ]


def reason_name(reason: int) -> str:
    """`FORWARDED` for 0, else the drop reason's name in the drop-reason table (`POLICY_DENIED`)."""
    return "FORWARDED" if reason == 0 else DROP_REASONS.get(reason, (str(reason),))[0]


def metric_rows(totals: Mapping[MetricsKey, tuple[int, int]]) -> list[Row]:
    rows = [
        {"endpoint_id": key.endpoint_id,
         "direction": TrafficDirection.name_of(key.direction, str(key.direction)).lower(),
         "reason": reason_name(key.reason), "packets": packets, "bytes": nbytes}
        for key, (packets, nbytes) in totals.items()
    ]
    # by the direction's name, so the order does not follow the datapath's numeric encoding
    return sorted(rows, key=lambda row: (row["endpoint_id"], row["direction"]))


def lb_rows(services: Mapping[lbm.ServiceKey, lbm.ServiceValue], backends: Mapping[int, lbm.BackendValue]) -> list[Row]:
    """Each frontend (slot 0) with its slots and the backends they name."""
    rows = []
    for key, value in sorted(services.items(), key=lambda kv: (str(kv[0].address), kv[0].port, kv[0].slot)):
        if key.slot:
            continue
        slots = []
        for slot in range(1, value.count + 1):
            slot_value = services.get(lbm.ServiceKey(key.address, key.port, key.protocol, slot))
            backend = backends.get(slot_value.backend_id) if slot_value else None
            slots.append({"slot": slot, "backend_id": slot_value.backend_id if slot_value else None,
                          "backend": host_port(backend.address, backend.port) if backend else None,
                          "state": lbm.BACKEND_STATE_NAMES.get(backend.state) if backend else None})
        rows.append({"frontend": host_port(key.address, key.port), "protocol": ipproto.name_of(key.protocol),
                     "rev_nat_id": value.rev_nat_id,
                     "flags": [name for bit, name in _SERVICE_FLAGS if value.flags & bit],
                     "affinity_timeout": value.affinity_timeout, "backends": slots})
    return rows


def port_text(port: int, bits: int) -> str:
    """`*` for any port, `80` for one, `8000-8003` for a prefix of `bits` leading bits."""
    if bits == 0:
        return "*"
    return str(port) if bits == 16 else f"{port}-{port + (1 << (16 - bits)) - 1}"


def _rule_text(rule: dict[str, Any]) -> str:
    namespace = f"{rule['namespace']}/" if rule["namespace"] else ""
    return f"{rule['kind']}/{namespace}{rule['name']} {rule['rule']}"


def policy_rows(endpoint_id: int, installed: InstalledEntries | None, describe_rule: RuleLookup) -> Row:
    """The endpoint's live policy entries, with identity classes expanded and rules named."""
    if installed is None:
        return {"endpoint_id": endpoint_id, "installed": False}
    members: dict[tuple[str, int], list[int]] = {}
    for entry in installed.classes:
        members.setdefault((str(entry.direction), entry.klass), []).append(entry.identity)
    rows = []
    for port in installed.ports:
        key, value, direction = port.key, port.value, str(port.direction)
        rule = describe_rule(value.rule_id)
        allow = value.verdict in (ALLOW, REDIRECT, REDIRECT_DNS)
        rows.append({
            "direction": direction,
            "identities": sorted(members.get((direction, port.klass), [])) if port.klass else "any other",
            "class": port.klass,
            "port": port_text(key.port, key.bits if key.protocol else 0),
            "protocol": ipproto.name_of(key.protocol) if key.protocol else "ANY",
            "verdict": ("redirect (L7 proxy)" if value.verdict == REDIRECT
                        else "redirect (DNS proxy)" if value.verdict == REDIRECT_DNS else "allow" if allow else "deny"),
            "rule": _rule_text(rule) if rule else ("no enforcement" if allow else "-"),
        })
    rows.sort(key=lambda r: (r["direction"], r["class"], r["protocol"], r["port"]))
    return {"endpoint_id": endpoint_id, "installed": True, "flags": installed.flags, "entries": rows,
            "identity_entries": len(installed.classes)}
