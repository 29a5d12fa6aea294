"""A stored Pod -> PodInfo (cilia.lb.pods): readiness, termination, named ports."""

from __future__ import annotations

import ipaddress
from typing import Any

from cilia.lb.model import BackendState, L4Protocol
from cilia.lb.pods import pod_info

ADDRESSES = (ipaddress.ip_address("10.1.0.5"), ipaddress.ip_address("fd00:1::5"))


def pod(**extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web1", "namespace": "prod",
                                                            "labels": {"app": "web"}, **extra.pop("metadata", {})},
            "spec": {"containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
                {"name": "sctp", "containerPort": 9999, "protocol": "SCTP"}, {"containerPort": 7}]}]}, **extra}


def test_a_plain_pod_is_an_active_backend_with_its_named_ports() -> None:
    info = pod_info(pod(), ADDRESSES, "n1")
    assert (info.namespace, info.name, info.labels, info.addresses, info.node) == (
        "prod", "web1", {"app": "web"}, ADDRESSES, "n1")
    assert info.state is BackendState.ACTIVE
    assert info.named_ports == {("http", L4Protocol.TCP): 8080, ("dns", L4Protocol.UDP): 5353}


def test_ready_false_is_no_backend_and_deletion_makes_it_terminating() -> None:
    not_ready = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    assert pod_info(pod(**not_ready), ADDRESSES, "n1").state is None
    deleting = pod(metadata={"deletionTimestamp": "2026-12-01T00:00:00Z"})
    assert pod_info(deleting, ADDRESSES, "n1").state is BackendState.TERMINATING
    assert pod_info({**deleting, **not_ready}, ADDRESSES, "n1").state is None


def test_a_pod_without_spec_or_namespace_parses() -> None:
    info = pod_info({"metadata": {"name": "bare"}}, (), None)
    assert (info.namespace, info.named_ports, info.addresses, info.ready) == ("default", {}, (), True)
