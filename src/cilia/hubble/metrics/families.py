"""Handlers that serve more than one metric family, or a histogram (Hubble's `http`, `httpV2`,
`dns`): what such a handler declares and returns, for `cilia.hubble.metrics.processor`.

A plain handler (`handlers.Handler`) is one counter family; a `MultiHandler` declares its
families and returns samples: (family index, label values before the context labels, value),
the value being 1 for a counter and the observation for a histogram."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

# Prometheus' default buckets (client_golang prometheus.DefBuckets), which Hubble's HTTP
# duration histogram uses.
DEFAULT_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Sample = tuple[int, tuple[str, ...], float]


@dataclass(frozen=True)
class Family:
    metric: str  # the Prometheus family (a counter without its _total)
    help: str
    labels: tuple[str, ...]  # before the context labels
    buckets: tuple[float, ...] = ()  # set: a histogram with these upper bounds (+Inf added)


class MultiHandler(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def families(self) -> tuple[Family, ...]: ...

    @property
    def invert_context(self) -> bool: ...  # httpV2: source/destination contexts swapped

    def samples(self, flow: Mapping[str, Any]) -> list[Sample]: ...

    def configure(self, flags: frozenset[str]) -> MultiHandler: ...  # the metric's flag options
