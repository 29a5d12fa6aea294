"""A stored Pod object -> the PodInfo the selector path of cilia.lb.state needs.

The object was validated when applied (cilia.resources.validate); its addresses are not in it
(this node's endpoint records have them), so the caller passes them in.
"""

from __future__ import annotations

from typing import Any

from cilia import ipproto
from cilia.lb.model import IPAddress, L4Protocol
from cilia.lb.state import PodInfo
from cilia.resources.pods import PodFacts, read_pod


def named_ports(pod: PodFacts) -> dict[tuple[str, L4Protocol], int]:
    """Container port names -> numbers, per protocol a service can use (TCP, UDP)."""
    return {(port.name, L4Protocol(ipproto.name_of(port.protocol))): port.port for port in pod.named_ports()
            if port.protocol in (ipproto.TCP, ipproto.UDP)}


def pod_info(pod: dict[str, Any], addresses: tuple[IPAddress, ...], node: str | None) -> PodInfo:
    facts = read_pod(pod)
    return PodInfo(namespace=facts.namespace, name=facts.name, labels=dict(facts.labels), addresses=addresses,
                   node=node, ready=facts.ready, terminating=facts.terminating, named_ports=named_ports(facts))
