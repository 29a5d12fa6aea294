"""Validation of the core kinds (Namespace, Pod) and the checks every kind shares (metadata, labels).

Which kinds a store accepts is a `cilia.resources.kinds.KindRegistry` built by the composition root."""

from __future__ import annotations

import re
from typing import Any

from cilia.resources.fields import as_list
from cilia.resources.parse import ResourceError

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status"}
METADATA = {"name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
            "creationTimestamp", "ownerReferences", "finalizers", "generateName", "managedFields"}


def describe(obj: dict[str, Any]) -> str:
    raw = obj.get("metadata")
    metadata: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = obj.get("kind", "?")
    name = metadata.get("name", "?")
    namespace = metadata.get("namespace")
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def _fail(obj: dict[str, Any], field: str, problem: str) -> ResourceError:
    return ResourceError(f"{describe(obj)}: field {field!r}: {problem}")


def validate_labels(obj: dict[str, Any], labels: Any, field: str) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise _fail(obj, field, "must be a map of strings")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise _fail(obj, f"{field}.{key}", "keys and values must be strings (quote numbers and booleans)")
        prefix, _, name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
            raise _fail(obj, f"{field}.{key}", f"prefix {prefix!r} is not a DNS subdomain")
        if len(name) > 63 or not LABEL_NAME.match(name):
            raise _fail(obj, f"{field}.{key}", "name must be 63 characters or less, alphanumeric, '-', '_', '.'")
        if len(value) > 63 or not LABEL_VALUE.match(value):
            raise _fail(obj, f"{field}.{key}", f"value {value!r} is not a valid label value")


def validate_common(obj: dict[str, Any], namespaced: bool) -> None:
    unknown = set(obj) - TOP_LEVEL
    if unknown:
        raise _fail(obj, sorted(unknown)[0], "unknown field")
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise _fail(obj, "metadata", "is required and must be an object")
    unknown = set(metadata) - METADATA
    if unknown:
        raise _fail(obj, f"metadata.{sorted(unknown)[0]}", "unknown field")
    name = metadata.get("name")
    if not isinstance(name, str) or len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        raise _fail(obj, "metadata.name", "is required and must be a DNS-1123 subdomain (lowercase, '-', '.')")
    if namespaced:
        namespace = metadata.setdefault("namespace", "default")
        if not isinstance(namespace, str) or not DNS1123_LABEL.match(namespace):
            raise _fail(obj, "metadata.namespace", "must be a DNS-1123 label")
    elif "namespace" in metadata:
        raise _fail(obj, "metadata.namespace", f"{obj['kind']} is cluster-scoped and takes no namespace")
    validate_labels(obj, metadata.get("labels"), "metadata.labels")


def validate_namespace(obj: dict[str, Any]) -> None:
    validate_common(obj, namespaced=False)
    if not DNS1123_LABEL.match(obj["metadata"]["name"]):
        raise _fail(obj, "metadata.name", "a namespace name must be a DNS-1123 label")


def validate_pod(obj: dict[str, Any]) -> None:
    """The fields the agent reads at run time (named container ports, the service account, the
    Ready condition) are checked here, so what is stored never surprises a reader."""
    validate_common(obj, namespaced=True)

    def fail(field: str, problem: str) -> ResourceError:
        return _fail(obj, field, problem)

    spec = obj.get("spec", {})
    if not isinstance(spec, dict):
        raise fail("spec", "must be an object")
    account = spec.get("serviceAccountName")
    if account is not None and (not isinstance(account, str) or len(account) > 253
                                or not DNS1123_SUBDOMAIN.match(account)):
        raise fail("spec.serviceAccountName", "must be a DNS-1123 subdomain (lowercase, '-', '.')")
    containers = spec.get("containers", [])
    if not isinstance(containers, list):
        raise fail("spec.containers", "must be a list")
    for ci, container in enumerate(containers):
        if not isinstance(container, dict):
            raise fail(f"spec.containers[{ci}]", "must be an object")
        for pi, port in enumerate(as_list(container.get("ports"), f"spec.containers[{ci}].ports", fail)):
            where = f"spec.containers[{ci}].ports[{pi}]"
            if not isinstance(port, dict):
                raise fail(where, "must be an object with containerPort")
            number = port.get("containerPort")
            if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
                raise fail(f"{where}.containerPort", "is required and must be an integer 1-65535")
            protocol = port.get("protocol", "TCP")
            if protocol not in ("TCP", "UDP", "SCTP"):
                raise fail(f"{where}.protocol", f"{protocol!r} is not one of TCP, UDP, SCTP")
            name = port.get("name")
            if name is not None and (not isinstance(name, str) or len(name) > 15 or not DNS1123_LABEL.match(name)):
                raise fail(f"{where}.name", "must be a DNS-1123 label of at most 15 characters")
    status = obj.get("status")
    if status is not None:
        if not isinstance(status, dict):
            raise fail("status", "must be an object")
        for index, condition in enumerate(as_list(status.get("conditions"), "status.conditions", fail)):
            if not isinstance(condition, dict) or not all(
                    isinstance(condition.get(key), str) for key in ("type", "status")):
                raise fail(f"status.conditions[{index}]", "must be an object with type and status (strings)")

