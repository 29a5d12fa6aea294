"""Hubble's label contexts on cilia's flows: the `source` / `destination` label a metric gets
from `sourceContext=...` (the first non-empty of the alternatives given, per traffic direction
when `source{Egress,Ingress}Context` is set) and the `labelsContext` labels.

Each value also says which pods it names, so the processor can drop a deleted pod's series
(Hubble's rule: a `pod` context, or labelsContext with `*_namespace` and `*_pod`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cilia.hubble.metrics.options import ContextOptions

Pod = tuple[str, str]  # (namespace, pod name)
_APP_LABELS = ("app.kubernetes.io/name", "k8s-app", "app")
_KUBE_APISERVER = "reserved:kube-apiserver"


def _label_value(labels: list[str], key: str) -> str:
    for label in labels:
        _source, _, rest = label.partition(":")
        lkey, _, value = rest.partition("=")
        if lkey == key:
            return value
    return ""


def _workload(endpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    workloads = endpoint.get("workloads") or []
    return workloads[0] if workloads else {}


def context_value(context: str, endpoint: Mapping[str, Any], ip: str, names: list[str]) -> str:
    """One context of one side of a flow, as Hubble's ContextOptions compute it ("" when unknown)."""
    if context == "identity":
        return ",".join(endpoint.get("labels") or [])
    if context == "namespace":
        return str(endpoint.get("namespace") or "")
    if context == "pod":
        pod = endpoint.get("pod_name") or ""
        return f"{endpoint.get('namespace') or ''}/{pod}" if pod else ""
    if context == "pod-name":
        return str(endpoint.get("pod_name") or "")
    if context == "dns":
        return ",".join(names)
    if context == "ip":
        return ip
    if context == "reserved-identity":
        reserved = [label for label in endpoint.get("labels") or [] if label.startswith("reserved:")]
        # Hubble: kube-apiserver wins when it comes with host / remote-node / world
        return _KUBE_APISERVER if _KUBE_APISERVER in reserved else (reserved[0] if reserved else "")
    if context == "workload":
        name = _workload(endpoint).get("name") or ""
        return f"{endpoint.get('namespace') or ''}/{name}" if name else ""
    if context == "workload-name":
        return str(_workload(endpoint).get("name") or "")
    if context == "app":
        labels = endpoint.get("labels") or []
        for key in _APP_LABELS:
            if value := _label_value(labels, key):
                return value
        return ""
    raise ValueError(f"unknown context {context!r}")


class LabelContext:
    """Computes a metric's context label values for a flow, and the pods those values name."""

    def __init__(self, options: ContextOptions) -> None:
        self.options = options
        self.names = options.label_names()

    def _side(self, flow: Mapping[str, Any], side: str) -> tuple[str, Pod | None]:
        o = self.options
        direction = flow.get("traffic_direction", "")
        if side == "source":
            choices = (o.source_egress if direction == "EGRESS" and o.source_egress else
                       o.source_ingress if direction == "INGRESS" and o.source_ingress else o.source)
        else:
            choices = (o.destination_egress if direction == "EGRESS" and o.destination_egress else
                       o.destination_ingress if direction == "INGRESS" and o.destination_ingress else o.destination)
        endpoint = flow.get(side) or {}
        ip = (flow.get("IP") or {}).get(side, "")
        names = flow.get(f"{side}_names") or []
        for context in choices:
            value = context_value(context, endpoint, ip, names)
            if value:
                pod = (str(endpoint.get("namespace") or ""), str(endpoint["pod_name"])) \
                    if context in ("pod", "pod-name") and endpoint.get("pod_name") else None
                return value, pod
        return "", None

    def values(self, flow: Mapping[str, Any]) -> tuple[tuple[str, ...], frozenset[Pod]]:
        o = self.options
        values: list[str] = []
        pods: set[Pod] = set()
        for side, present in (("source", o.has_source), ("destination", o.has_destination)):
            if present:
                value, pod = self._side(flow, side)
                values.append(value)
                if pod is not None:
                    pods.add(pod)
        labels = set(o.labels)
        for name in o.labels:
            values.append(self._labels_context(flow, name))
        for side in ("source", "destination"):
            endpoint = flow.get(side) or {}
            if {f"{side}_namespace", f"{side}_pod"} <= labels and endpoint.get("pod_name"):
                pods.add((str(endpoint.get("namespace") or ""), str(endpoint["pod_name"])))
        return tuple(values), frozenset(pods)

    @staticmethod
    def _labels_context(flow: Mapping[str, Any], name: str) -> str:
        if name == "traffic_direction":
            direction = str(flow.get("traffic_direction") or "")
            return direction.lower() if direction in ("INGRESS", "EGRESS") else "unknown"
        side, _, what = name.partition("_")
        endpoint = flow.get(side) or {}
        if what == "ip":
            return str((flow.get("IP") or {}).get(side, ""))
        if what == "namespace":
            return str(endpoint.get("namespace") or "")
        if what == "pod":
            return str(endpoint.get("pod_name") or "")
        if what == "workload":
            return str(_workload(endpoint).get("name") or "")
        if what == "workload_kind":
            return str(_workload(endpoint).get("kind") or "")
        if what == "app":
            return context_value("app", endpoint, "", [])
        raise ValueError(f"unknown labelsContext label {name!r}")
