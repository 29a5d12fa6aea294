"""/v1/bpf/*: the datapath's maps, read through the agent so the CLI needs no bpf privileges or
layout knowledge. Entries come decoded from the datapath adapter; `maprows` renders them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import APIRouter

from cilia.agent.api import maprows
from cilia.api.models import Endpoint
from cilia.maps.addr import IPAddress
from cilia.maps.ct import CtEntry, CtTuple
from cilia.maps.endpoints import EndpointInfo
from cilia.maps.ipcache import IpcacheValue, Prefix
from cilia.maps.metrics import MetricsKey
from cilia.maps.policy import InstalledEntries

if TYPE_CHECKING:
    from cilia.agent.datapath_adapter import LbEntries


class MapReader(Protocol):
    """Decoded entries of the node's maps (the datapath adapter)."""

    def lb_entries(self) -> LbEntries: ...

    def ct_entries(self) -> list[tuple[CtTuple, CtEntry]]: ...

    def ipcache_entries(self) -> dict[Prefix, IpcacheValue]: ...

    def endpoint_entries(self) -> dict[IPAddress, EndpointInfo]: ...

    def metric_totals(self) -> dict[MetricsKey, tuple[int, int]]: ...

    def policy_entries(self, endpoint_id: int) -> InstalledEntries | None: ...


class EndpointLookup(Protocol):
    def get(self, endpoint_id: int) -> Endpoint: ...  # a 404 ApiError for an unknown id


def make_router(maps: MapReader, endpoints: EndpointLookup, describe_rule: maprows.RuleLookup,
                clock: Callable[[], float] = time.monotonic) -> APIRouter:
    """`clock` is CLOCK_MONOTONIC in seconds, the clock of conntrack expiry."""
    router = APIRouter(prefix="/v1")

    @router.get("/bpf/policy/{endpoint_id}")
    def bpf_policy(endpoint_id: int) -> dict[str, Any]:
        endpoints.get(endpoint_id)
        return maprows.policy_rows(endpoint_id, maps.policy_entries(endpoint_id), describe_rule)

    @router.get("/bpf/lb")
    def bpf_lb() -> list[dict[str, Any]]:
        entries = maps.lb_entries()
        return maprows.lb_rows(entries.services, entries.backends)

    @router.get("/bpf/ct")
    def bpf_ct() -> list[dict[str, Any]]:
        return maprows.ct_rows(maps.ct_entries(), clock())

    @router.get("/bpf/ipcache")
    def bpf_ipcache() -> list[dict[str, Any]]:
        return maprows.ipcache_rows(maps.ipcache_entries())

    @router.get("/bpf/endpoints")
    def bpf_endpoints() -> list[dict[str, Any]]:
        return maprows.endpoint_rows(maps.endpoint_entries())

    @router.get("/bpf/metrics")
    def bpf_metrics() -> list[dict[str, Any]]:
        return maprows.metric_rows(maps.metric_totals())

    return router
