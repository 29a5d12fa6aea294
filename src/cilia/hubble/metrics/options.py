"""`--hubble-metrics` parsed as Cilium parses `hubble.metrics.enabled`: metrics separated by
whitespace (Cilium's documented form) or commas (a flag's list form), each `name` or
`name:opt1=v1;opt2=v2;flag`. Context options take alternatives separated by `|`
(`sourceContext=namespace|pod|identity`); `labelsContext` takes a comma-separated list of label
names, so a comma inside a labelsContext continues the list when what follows is a label name.

Every error is a `MetricsOptionError` naming the metric and the option at fault."""

from __future__ import annotations

from dataclasses import dataclass, field

# Metrics cilia serves; the rest of Hubble's list is recognised and refused with a clear message.
SUPPORTED = ("flow", "drop", "tcp", "policy", "icmp", "port-distribution", "dns", "http", "httpV2")
UPSTREAM_ONLY = ("kafka", "flows-to-world")
# Options without a value some metrics take (upstream compares them lower-cased), by metric.
FLAG_OPTIONS: dict[str, dict[str, str]] = {"dns": {"query": "query", "ignoreaaaa": "ignoreAAAA"}}

# sourceContext / destinationContext values (Hubble's ContextOptions).
CONTEXTS = ("identity", "namespace", "pod", "pod-name", "dns", "ip", "reserved-identity", "workload",
            "workload-name", "app")
CONTEXT_OPTIONS = ("sourceContext", "sourceEgressContext", "sourceIngressContext", "destinationContext",
                   "destinationEgressContext", "destinationIngressContext")
LABELS_CONTEXT = ("source_ip", "source_namespace", "source_pod", "source_workload", "source_workload_kind",
                  "source_app", "destination_ip", "destination_namespace", "destination_pod",
                  "destination_workload", "destination_workload_kind", "destination_app", "traffic_direction")


_METRIC_NAMES = frozenset((*SUPPORTED, *UPSTREAM_ONLY))


class MetricsOptionError(ValueError):
    """A --hubble-metrics value cilia cannot serve; the message names the metric and option."""


@dataclass(frozen=True)
class ContextOptions:
    """Which context labels a metric carries (all empty: none)."""

    source: tuple[str, ...] = ()
    source_egress: tuple[str, ...] = ()
    source_ingress: tuple[str, ...] = ()
    destination: tuple[str, ...] = ()
    destination_egress: tuple[str, ...] = ()
    destination_ingress: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()

    @property
    def has_source(self) -> bool:
        return bool(self.source or self.source_egress or self.source_ingress)

    @property
    def has_destination(self) -> bool:
        return bool(self.destination or self.destination_egress or self.destination_ingress)

    def label_names(self) -> list[str]:
        """In Hubble's order: source, destination, then labelsContext in the order given."""
        names = ["source"] if self.has_source else []
        if self.has_destination:
            names.append("destination")
        return names + list(self.labels)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    context: ContextOptions = field(default_factory=ContextOptions)
    text: str = ""  # as given, for messages
    flags: frozenset[str] = frozenset()  # FLAG_OPTIONS given (dns: query, ignoreAAAA)


_FIELD_OF = {"sourceContext": "source", "sourceEgressContext": "source_egress",
             "sourceIngressContext": "source_ingress", "destinationContext": "destination",
             "destinationEgressContext": "destination_egress",
             "destinationIngressContext": "destination_ingress"}


def _split_metrics(text: str) -> list[str]:
    """Whitespace always separates metrics; a comma does too, except inside a labelsContext
    list, unless what follows is a metric name (label names never collide with metric names)."""
    metrics: list[str] = []
    for token in text.split():
        pieces = token.split(",")
        current = pieces[0]
        for piece in pieces[1:]:
            last_option = current.partition(":")[2].rpartition(";")[2]
            # inside a labelsContext list, anything but a metric name continues it (so that a
            # misspelt label is reported as one, not as an unknown metric)
            if last_option.startswith("labelsContext=") and piece.partition(":")[0] not in _METRIC_NAMES:
                current += "," + piece
            else:
                metrics.append(current)
                current = piece
        metrics.append(current)
    return metrics


def _contexts(metric: str, option: str, value: str) -> tuple[str, ...]:
    if not value:
        raise MetricsOptionError(f"--hubble-metrics {metric}: option {option} needs a value "
                                 f"({'|'.join(CONTEXTS)})")
    choices = tuple(value.split("|"))
    for choice in choices:
        if choice not in CONTEXTS:
            raise MetricsOptionError(f"--hubble-metrics {metric}: {option}={value}: unknown context {choice!r} "
                                     f"(one or more of {'|'.join(CONTEXTS)})")
    if len(set(choices)) != len(choices):
        raise MetricsOptionError(f"--hubble-metrics {metric}: {option}={value}: a context is given twice")
    return choices


def _labels(metric: str, value: str) -> tuple[str, ...]:
    if not value:
        raise MetricsOptionError(f"--hubble-metrics {metric}: option labelsContext needs a value "
                                 f"({','.join(LABELS_CONTEXT)})")
    names = tuple(value.split(","))
    for name in names:
        if name not in LABELS_CONTEXT:
            raise MetricsOptionError(f"--hubble-metrics {metric}: labelsContext={value}: unknown label {name!r} "
                                     f"(known: {', '.join(LABELS_CONTEXT)})")
    if len(set(names)) != len(names):
        raise MetricsOptionError(f"--hubble-metrics {metric}: labelsContext={value}: a label is given twice")
    return names


def parse_metric(text: str) -> MetricSpec:
    name, sep, rest = text.partition(":")
    if not name:
        raise MetricsOptionError(f"--hubble-metrics {text!r}: a metric name is missing before ':'")
    if name in UPSTREAM_ONLY:
        raise MetricsOptionError(f"--hubble-metrics {name}: not served by cilia (served: {', '.join(SUPPORTED)})")
    if name not in SUPPORTED:
        raise MetricsOptionError(f"--hubble-metrics {name!r}: unknown metric (served: {', '.join(SUPPORTED)})")
    values: dict[str, tuple[str, ...]] = {}
    labels: tuple[str, ...] = ()
    seen: set[str] = set()
    flags: set[str] = set()
    if sep:
        if not rest:
            raise MetricsOptionError(f"--hubble-metrics {name}: nothing after ':'")
        for option in rest.split(";"):
            key, has_value, value = option.partition("=")
            if not key:
                raise MetricsOptionError(f"--hubble-metrics {name}: empty option in {rest!r}")
            if key in seen:
                raise MetricsOptionError(f"--hubble-metrics {name}: option {key} given twice")
            seen.add(key)
            if key in _FIELD_OF:
                values[_FIELD_OF[key]] = _contexts(name, key, value if has_value else "")
            elif key == "labelsContext":
                labels = _labels(name, value if has_value else "")
            elif key.lower() in FLAG_OPTIONS.get(name, {}):
                flags.add(FLAG_OPTIONS[name][key.lower()])
            elif key == "exemplars" and name in ("http", "httpV2"):
                raise MetricsOptionError(f"--hubble-metrics {name}: option exemplars: OpenMetrics exemplars are "
                                         "not served by cilia")
            else:
                known = (*CONTEXT_OPTIONS, "labelsContext", *FLAG_OPTIONS.get(name, {}).values())
                raise MetricsOptionError(f"--hubble-metrics {name}: unknown option {key!r} (known: "
                                         f"{', '.join(known)})")
    return MetricSpec(name, ContextOptions(labels=labels, **values), text, frozenset(flags))


def parse_metrics(values: str | list[str] | tuple[str, ...]) -> tuple[MetricSpec, ...]:
    """All --hubble-metrics values (the flag may be repeated) -> one spec per metric, in order."""
    texts = [values] if isinstance(values, str) else list(values)
    specs: list[MetricSpec] = []
    names: set[str] = set()
    for text in texts:
        for metric in _split_metrics(text):
            if not metric:
                continue  # `flow,,drop` or a trailing comma
            spec = parse_metric(metric)
            if spec.name in names:
                raise MetricsOptionError(f"--hubble-metrics {spec.name}: given twice")
            names.add(spec.name)
            specs.append(spec)
    return tuple(specs)
