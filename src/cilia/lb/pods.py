"""A stored Pod object -> the PodInfo the selector path of cilia.lb.state needs, and where the
addresses of pods on other nodes come from (`RemotePodSource`).

The object was validated when applied (cilia.resources.validate); its addresses are not in it
(this node's endpoint records have them for local pods, the cluster view for remote ones), so the
caller passes them in with the pod's node.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

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


@dataclass(frozen=True)
class RemotePod:
    """A pod hosted by another node, as the cluster view knows it: the node and the pod's IPs."""

    namespace: str
    name: str
    node: str
    addresses: tuple[IPAddress, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class RemotePodSource(Protocol):
    """Pods on other nodes ("namespace/name" -> RemotePod), provided by the composition root from
    the cluster view (cilia.agent.cluster); the engine reads it outside its own lock and is told
    of changes through `ServiceManager.on_remote_pods_changed`."""

    def remote_pods(self) -> Mapping[str, RemotePod] | None:
        """None: not known yet (the cluster tables were never listed, e.g. etcd down at start)."""
        ...


def encode_remote(pods: Mapping[str, RemotePod]) -> dict[str, dict[str, Any]]:
    """The remote backends' pods as the engine's cache file holds them."""
    return {key: {"node": pod.node, "addresses": [str(a) for a in pod.addresses]} for key, pod in sorted(pods.items())}


def decode_remote(raw: object) -> dict[str, RemotePod]:
    """The cache file's pods; anything malformed is left out (the cluster view replaces it soon)."""
    found: dict[str, RemotePod] = {}
    if not isinstance(raw, dict):
        return found
    for key, value in raw.items():
        namespace, _, name = str(key).partition("/")
        try:
            addresses = tuple(ipaddress.ip_address(a) for a in value["addresses"])
            found[key] = RemotePod(namespace, name, str(value["node"]), addresses)
        except (TypeError, KeyError, ValueError):
            continue
    return found
