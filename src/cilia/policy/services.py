"""Service and EndpointSlice objects -> the ServiceFacts toServices rules are resolved against.

Parsed with the load balancer's own parsers (cilia.lb.k8s), so policy and the LB agree on what a
service's backends are: an EndpointSlice endpoint counts while it serves (ready, or terminating
and still serving), as the LB keeps it a backend. Objects that no longer parse are skipped (they
were validated when applied)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from cilia.lb.k8s import SERVICE_NAME_LABEL, parse_endpoint_slice, parse_service
from cilia.policy.addresses import IPAddress, ServiceFacts
from cilia.policy.selector import labels_of
from cilia.resources.parse import ResourceError

log = logging.getLogger(__name__)


def service_facts(services: Iterable[dict[str, Any]], slices: Iterable[dict[str, Any]]) -> list[ServiceFacts]:
    by_service: dict[tuple[str, str], list[tuple[IPAddress, bool]]] = {}
    for obj in slices:
        metadata = _mapping(obj.get("metadata"))
        if not _mapping(metadata.get("labels")).get(SERVICE_NAME_LABEL):
            continue
        try:
            slice_ = parse_endpoint_slice(obj)
        except ResourceError:
            log.warning("EndpointSlice %s does not parse; not used for toServices", metadata.get("name"))
            continue
        found = by_service.setdefault((slice_.service.namespace, slice_.service.name), [])
        for endpoint in slice_.endpoints:
            if endpoint.state is not None:
                found += [(address, endpoint.pod is not None) for address in endpoint.addresses]
    facts: list[ServiceFacts] = []
    for obj in services:
        try:
            spec = parse_service(obj)
        except ResourceError:
            log.warning("Service %s does not parse; not used for toServices", _mapping(obj.get("metadata")).get("name"))
            continue
        labels = _mapping(_mapping(obj.get("metadata")).get("labels"))
        key = (spec.name.namespace, spec.name.name)
        facts.append(ServiceFacts(spec.name.namespace, spec.name.name,
                                  labels_of(f"{k}={v}" for k, v in sorted(labels.items())),
                                  spec.selector, tuple(sorted(set(by_service.get(key, ())), key=str))))
    return facts


def _mapping(value: Any) -> dict[str, Any]:
    """A stored object's map field, or {} when it is anything else (objects were validated on apply;
    this reader must not crash on one that somehow is not)."""
    return value if isinstance(value, dict) else {}
