"""API rows of the service engine's state: services with frontends and backends, Maglev tables,
the frontend behind a rev-NAT id (for flows). Plain dicts, as the API returns them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cilia.hostport import host_port
from cilia.lb.desired import ServiceState
from cilia.lb.entries import BackendKey
from cilia.lb.model import FrontendKey, LbFrontend, ServiceName

RevNatIdOf = Callable[[FrontendKey], int | None]
BackendIdOf = Callable[[BackendKey], int | None]


def frontend_text(key: FrontendKey) -> str:
    return host_port(key.address, key.port)


def rev_nat_row(key: FrontendKey, owner: ServiceName | None) -> dict[str, Any]:
    return {"service": str(owner) if owner else None, "namespace": owner.namespace if owner else "",
            "name": owner.name if owner else "", "address": str(key.address), "port": key.port,
            "protocol": key.protocol.value, "frontend": frontend_text(key)}


def _frontend_row(frontend: LbFrontend, rev_nat_id_of: RevNatIdOf, backend_id_of: BackendIdOf) -> dict[str, Any]:
    protocol = frontend.key.protocol
    return {
        "address": frontend_text(frontend.key), "protocol": protocol.value, "type": frontend.type.value,
        "port_name": frontend.port_name, "rev_nat_id": rev_nat_id_of(frontend.key),
        "local_only": frontend.local_only,
        "backends": [{"address": host_port(b.address, b.port), "state": b.state.value, "weight": b.weight,
                      "pod": b.pod, "node": b.node,
                      "backend_id": backend_id_of((b.address, b.port, protocol.number))}
                     for b in frontend.backends],
    }


def service_rows(services: Mapping[ServiceName, ServiceState], errors: Mapping[ServiceName, str],
                 rev_nat_id_of: RevNatIdOf, backend_id_of: BackendIdOf) -> list[dict[str, Any]]:
    rows = []
    for name, state in sorted(services.items()):
        if state.spec is None:
            continue
        rows.append({
            "namespace": name.namespace, "name": name.name, "type": state.spec.type.value,
            "cluster_ips": [str(ip) for ip in state.cluster_ips],
            "session_affinity": f"ClientIP ({state.spec.affinity_timeout} s)"
            if state.spec.affinity_timeout else "None",
            "conflicts": state.conflicts,
            "error": errors.get(name),
            "frontends": [_frontend_row(f, rev_nat_id_of, backend_id_of) for f in state.frontends],
        })
    return rows


def maglev_rows(state: ServiceState, rev_nat_id_of: RevNatIdOf, backend_id_of: BackendIdOf) -> list[dict[str, Any]]:
    """Each external frontend's Maglev table: entries per backend, and the table's head."""
    rows = []
    for frontend in state.frontends:
        rev_nat_id = rev_nat_id_of(frontend.key)
        entry = state.entries.maglev.get(rev_nat_id or 0)
        if entry is None:
            continue
        table = entry.table
        by_id = {backend_id_of((b.address, b.port, frontend.key.protocol.number)): host_port(b.address, b.port)
                 for b in frontend.backends}
        counts: dict[str, int] = {}
        for backend_id in table:
            label = by_id.get(backend_id, str(backend_id))
            counts[label] = counts.get(label, 0) + 1
        rows.append({"frontend": frontend_text(frontend.key), "type": frontend.type.value,
                     "rev_nat_id": rev_nat_id, "size": len(table), "entries_per_backend": counts,
                     "head": [by_id.get(i, str(i)) for i in table[:16]]})
    return rows
