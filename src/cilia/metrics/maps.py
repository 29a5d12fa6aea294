"""BPF map pressure (`cilia_bpf_map_pressure{map_name}`, Cilium's `cilium_bpf_map_pressure`: fill
ratio 0..1) of the shared maps, and each endpoint's policy entries against its budget
(`--policy-map-max-entries`): `cilia_policy_endpoint_map_entries{endpoint}` and, Cilium-style, a
pressure series per endpoint policy map (`map_name="cilia_policy_v1_<endpoint id, 5 digits>"`).

Counting a hash map's entries means walking its keys (the kernel keeps no count we can read),
~1 µs a key; a walk is cached for `ttl` seconds so that a scrape every few seconds of a big
conntrack table costs a walk per `ttl`, not per scrape."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cilia.bpf import BpfMap

PREFIX = "cilia_"
DEFAULT_TTL = 10.0
# The shared maps whose fill matters: conntrack, ipcache, endpoints, the LB maps, policy.
PRESSURE_MAPS = ("cilia_ct_tcp_v1", "cilia_ct_any_v1", "cilia_ipcache_v1", "cilia_endpoints_v1",
                 "cilia_lb_services_v1", "cilia_lb_backends_v1", "cilia_lb_revnat_v1", "cilia_lb_affinity_v1",
                 "cilia_lb_conn_v1", "cilia_lb_sock_v1", "cilia_policy_sel_v1", "cilia_policy_v1")


@dataclass(frozen=True)
class MapFill:
    name: str
    entries: int
    max_entries: int

    @property
    def pressure(self) -> float:
        return self.entries / self.max_entries if self.max_entries else 0.0


def count_entries(bpf_map: BpfMap) -> int:
    count = 0
    for _key in bpf_map.keys():  # noqa: SIM118 - a BPF map, not a dict
        count += 1
        if count >= bpf_map.max_entries:  # an LRU map cannot hold more; stop walking
            break
    return count


class MapCounter:
    """Entry counts of named maps, each walk cached for `ttl` seconds."""

    def __init__(self, maps: Callable[[], Mapping[str, BpfMap]], ttl: float = DEFAULT_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._maps = maps
        self._ttl = ttl
        self._clock = clock
        self._cache: tuple[float, list[MapFill]] | None = None
        self._lock = threading.Lock()

    def fills(self) -> list[MapFill]:
        with self._lock:
            now = self._clock()
            if self._cache is not None and now - self._cache[0] < self._ttl:
                return self._cache[1]
            fills = [MapFill(name, count_entries(m), int(m.max_entries)) for name, m in sorted(self._maps().items())]
            self._cache = (now, fills)
            return fills


class MapPressureCollector(Collector):
    def __init__(self, shared: Callable[[], Iterable[MapFill]],
                 policy_entries: Callable[[], Mapping[int, int]], policy_max_entries: int) -> None:
        self._shared = shared
        self._policy_entries = policy_entries
        self._policy_max = policy_max_entries

    def collect(self) -> Iterator[Metric]:
        pressure = GaugeMetricFamily(f"{PREFIX}bpf_map_pressure", "Fill percentage of map, tagged by map name",
                                     labels=["map_name"])
        for fill in self._shared():
            pressure.add_metric([fill.name], fill.pressure)
        per_endpoint = sorted(self._policy_entries().items())
        entries = GaugeMetricFamily(f"{PREFIX}policy_endpoint_map_entries",
                                    "Policy map entries an endpoint has installed (its budget is "
                                    "--policy-map-max-entries)", labels=["endpoint"])
        for endpoint_id, count in per_endpoint:
            pressure.add_metric([f"cilia_policy_v1_{endpoint_id:05d}"],
                                count / self._policy_max if self._policy_max else 0.0)
            entries.add_metric([str(endpoint_id)], count)
        yield pressure
        yield entries
        yield GaugeMetricFamily(f"{PREFIX}policy_endpoint_map_max_entries",
                                "Policy map entries one endpoint may use (--policy-map-max-entries)",
                                value=self._policy_max)
