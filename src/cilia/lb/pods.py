"""A stored Pod object -> the PodInfo the selector path of cilia.lb.state needs.

The object was validated when applied (cilia.resources.validate); its addresses are not in it
(this node's endpoint records have them), so the caller passes them in.
"""

from __future__ import annotations

from typing import Any

from cilia.lb.model import IPAddress, L4Protocol
from cilia.lb.state import PodInfo


def named_ports(pod: dict[str, Any]) -> dict[tuple[str, L4Protocol], int]:
    """Container port names -> numbers, per protocol a service can use (TCP, UDP)."""
    named: dict[tuple[str, L4Protocol], int] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") and port.get("protocol", "TCP") in ("TCP", "UDP"):
                named[(port["name"], L4Protocol(port.get("protocol", "TCP")))] = int(port["containerPort"])
    return named


def pod_info(pod: dict[str, Any], addresses: tuple[IPAddress, ...], node: str | None) -> PodInfo:
    """Ready unless a Ready condition says False; terminating once it has a deletionTimestamp."""
    metadata = pod.get("metadata", {})
    conditions = ((pod.get("status") or {}).get("conditions")) or []
    ready = not any(c.get("type") == "Ready" and c.get("status") == "False" for c in conditions)
    return PodInfo(namespace=metadata.get("namespace", "default"), name=metadata["name"],
                   labels=dict(metadata.get("labels") or {}), addresses=addresses, node=node, ready=ready,
                   terminating=bool(metadata.get("deletionTimestamp")), named_ports=named_ports(pod))
