"""The load-balancing kinds the object store accepts (Service, EndpointSlice), each validated by
parsing it completely: `cilia apply -f` rejects a bad one and the previous version stays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cilia.lb import k8s
from cilia.lb.model import EndpointSliceSpec, ServiceSpec
from cilia.resources.kinds import Kind
from cilia.resources.parse import ResourceError
from cilia.resources.validate import describe, validate_common

LbObject = ServiceSpec | EndpointSliceSpec

PARSERS: dict[tuple[str, str], Callable[[dict[str, Any]], LbObject]] = {
    (k8s.SERVICE_API_VERSION, k8s.SERVICE_KIND): k8s.parse_service,
    (k8s.SLICE_API_VERSION, k8s.SLICE_KIND): k8s.parse_endpoint_slice,
}
LB_KINDS = frozenset(kind for _api, kind in PARSERS)


def is_lb_object(obj: dict[str, Any]) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in PARSERS


def parse_lb_object(obj: dict[str, Any]) -> LbObject:
    return PARSERS[(obj["apiVersion"], obj["kind"])](obj)


def _validate_service(obj: dict[str, Any]) -> None:
    validate_common(obj, namespaced=True)
    k8s.parse_service(obj)


def _validate_endpoint_slice(obj: dict[str, Any]) -> None:
    # An EndpointSlice has top-level addressType/endpoints/ports and no spec or status, so check its
    # own top-level fields, then let validate_common check the rest without them. The copy is shallow:
    # validate_common's namespace default lands in obj's own metadata.
    for key in obj:
        if key not in k8s.SLICE_TOP_LEVEL:
            raise ResourceError(f"{describe(obj)}: field {str(key)!r}: unknown field")
    validate_common({k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata")}, namespaced=True)
    k8s.parse_endpoint_slice(obj)


# Registered by the composition root (cilia.resources.kinds.KindRegistry).
KINDS: tuple[Kind, ...] = (
    Kind(k8s.SERVICE_API_VERSION, k8s.SERVICE_KIND, True, _validate_service),
    Kind(k8s.SLICE_API_VERSION, k8s.SLICE_KIND, True, _validate_endpoint_slice),
)
