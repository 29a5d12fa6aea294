"""The agent's observability beyond the Hubble server and the base metrics: its flags
(`add_arguments` / `from_args`, one `ObservabilityConfig` in AgentConfig) and the parts it runs
(`Observability`): Hubble flow metrics (`--hubble-metrics`), BPF map pressure and policy map
fill, API request durations, and the flow exporter (`--hubble-export-file-path`); the flow
consumers are fed by background `FlowTap`s over the flow ring, never on the event pump."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from cilia.flows.ring import FlowRing
from cilia.flows.tap import FlowTap
from cilia.hubble.exporter import ExportFilterError, FlowExporter, parse_filters
from cilia.hubble.metrics.options import MetricsOptionError, MetricSpec, parse_metrics
from cilia.hubble.metrics.processor import FlowMetrics
from cilia.metrics.api_timing import ApiTimer, Asgi, api_histogram
from cilia.metrics.maps import PRESSURE_MAPS, MapCounter, MapFill, MapPressureCollector

if TYPE_CHECKING:
    from cilia.agent.datapath_adapter import DatapathAdapter
    from cilia.bpf import BpfMap
    from cilia.endpoint.manager import EndpointManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObservabilityConfig:
    hubble_metrics: tuple[MetricSpec, ...] = ()
    export_file: Path | None = None
    export_max_size_mb: int = 10
    export_max_backups: int = 5
    export_allow: tuple[str, ...] = ()  # FlowFilters as JSON, validated
    export_deny: tuple[str, ...] = ()


def _metrics_value(text: str) -> str:
    try:
        parse_metrics(text)
    except MetricsOptionError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def _non_negative(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit():
            raise argparse.ArgumentTypeError(f"{flag} {text!r}: must be a whole number >= 0")
        return int(text)
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("observability", "Hubble flow metrics and flow export "
                                      "(docs/observability.md)")
    group.add_argument("--hubble-metrics", action="append", type=_metrics_value, default=None,
                       help="Hubble flow metrics to serve on /metrics, Cilium's syntax: space or comma separated, "
                            "e.g. 'flow drop tcp policy:sourceContext=namespace|pod;destinationContext=pod' "
                            "(needs --prometheus-serve-addr; repeatable)")
    group.add_argument("--hubble-export-file-path", type=Path, default=None,
                       help="write every flow as a JSON line to this file (Hubble's exporter format)")
    group.add_argument("--hubble-export-file-max-size-mb", type=_non_negative("--hubble-export-file-max-size-mb"),
                       default=10, help="rotate the export file at this size (0: never)")
    group.add_argument("--hubble-export-file-max-backups", type=_non_negative("--hubble-export-file-max-backups"),
                       default=5, help="rotated export files kept")
    group.add_argument("--hubble-export-allowlist", action="append", default=None,
                       help="export only flows matching this FlowFilter (JSON, e.g. '{\"verdict\":[\"DROPPED\"]}'; "
                            "repeatable: any of them)")
    group.add_argument("--hubble-export-denylist", action="append", default=None,
                       help="never export flows matching this FlowFilter (JSON; repeatable)")


def from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ObservabilityConfig:
    try:
        specs = parse_metrics(args.hubble_metrics or [])
    except MetricsOptionError as exc:  # a metric given in two values of the flag
        parser.error(str(exc))
    if specs and not args.prometheus_serve_addr:
        parser.error("--hubble-metrics needs --prometheus-serve-addr (the metrics are served on /metrics)")
    allow, deny = tuple(args.hubble_export_allowlist or ()), tuple(args.hubble_export_denylist or ())
    try:
        parse_filters(allow, "--hubble-export-allowlist")
        parse_filters(deny, "--hubble-export-denylist")
    except ExportFilterError as exc:
        parser.error(str(exc))
    if (allow or deny) and args.hubble_export_file_path is None:
        parser.error("--hubble-export-allowlist/--hubble-export-denylist need --hubble-export-file-path")
    return ObservabilityConfig(specs, args.hubble_export_file_path, args.hubble_export_file_max_size_mb,
                               args.hubble_export_file_max_backups, allow, deny)


class Observability:
    """Built by the composition root; `start()` when the agent serves, `stop()` on the way out."""

    def __init__(self, config: ObservabilityConfig, ring: FlowRing, registry: CollectorRegistry,
                 datapath: DatapathAdapter, endpoints: EndpointManager, events_lost: Callable[[], int],
                 policy_max_entries: int) -> None:
        self.config = config
        self._ring = ring
        self._endpoints = endpoints
        self.api_seconds = api_histogram(registry)
        self.maps = MapCounter(lambda: _pressure_maps(datapath))
        registry.register(MapPressureCollector(self._map_fills, lambda: _policy_entries(datapath),
                                               policy_max_entries))
        self.flow_metrics: FlowMetrics | None = None
        if config.hubble_metrics:
            self.flow_metrics = FlowMetrics(config.hubble_metrics)
            self.flow_metrics.datapath_lost = events_lost
            registry.register(self.flow_metrics)
        self.exporter: FlowExporter | None = None
        self.taps: list[FlowTap] = []

    def _map_fills(self) -> list[MapFill]:
        try:
            return self.maps.fills()
        except (RuntimeError, OSError):  # maps not open yet, or gone under us: no series this scrape
            return []

    def wrap_api(self, app: Asgi) -> Asgi:
        return ApiTimer(app, self.api_seconds)

    def _pods_changed(self) -> None:
        if self.flow_metrics is not None:
            self.flow_metrics.set_pods((r.pod_namespace, r.pod_name) for r in self._endpoints.records()
                                       if r.pod_name)

    def start(self) -> None:
        if self.flow_metrics is not None:
            self._pods_changed()
            self._endpoints.subscribe(self._pods_changed)
            # counted within a CPU budget: under a flood the metrics sample (the rest is
            # hubble_lost_events_total{source="hubble_ring_buffer"})
            self.taps.append(FlowTap(self._ring, [self.flow_metrics], name="hubble-metrics"))
        config = self.config
        if config.export_file is not None:
            self.exporter = FlowExporter(config.export_file, config.export_max_size_mb, config.export_max_backups,
                                         parse_filters(config.export_allow, "--hubble-export-allowlist"),
                                         parse_filters(config.export_deny, "--hubble-export-denylist"))
            # every flow the ring still holds when a pass comes (no CPU budget: an export is a record)
            self.taps.append(FlowTap(self._ring, [self.exporter], name="hubble-export", budget=None))
            log.info("exporting flows to %s", config.export_file)
        for tap in self.taps:
            tap.start()

    def stop(self) -> None:
        for tap in self.taps:
            tap.stop()
        if self.exporter is not None:
            self.exporter.close()


def _pressure_maps(datapath: DatapathAdapter) -> dict[str, BpfMap]:
    maps = {}
    for name in PRESSURE_MAPS:
        try:
            maps[name] = datapath.datapath.map(name)
        except RuntimeError:
            continue
    return maps


def _policy_entries(datapath: DatapathAdapter) -> dict[int, int]:
    try:
        installed = dict(datapath.datapath.policy.installed)
    except RuntimeError:
        return {}
    return {endpoint_id: len(i.sel) + len(i.lpm) for endpoint_id, i in installed.items()}
