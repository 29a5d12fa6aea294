"""Mutation fuzz of the API's request models (pydantic), through model_validate as FastAPI uses
them: an invalid body is a ValidationError (the API's 422, naming the field), never another
exception (a 500)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from mutation import FUZZ, crashes_of_single_edits, mutated
from pydantic import BaseModel, ValidationError

from cilia.api.models import (
    AgentConfigPatch,
    ApplyRequest,
    BackendStateRequest,
    EndpointConfigRequest,
    EndpointCreateRequest,
    GcRequest,
    TraceRequest,
)

VALID: dict[type[BaseModel], list[dict[str, Any]]] = {
    EndpointCreateRequest: [{"container_id": "c1", "netns": "/run/netns/x", "ifname": "eth0",
                             "pod_namespace": "default", "pod_name": "web", "pod_uid": "u", "infra_container_id": "i",
                             "requested_ipv4": "10.200.1.9", "requested_ipv6": "fd00::9",
                             "requested_mac": "02:00:00:00:00:09", "mtu": 1500, "labels": {"app": "web"}}],
    EndpointConfigRequest: [{"policy_audit_mode": True}, {"policy_audit_mode": None}],
    AgentConfigPatch: [{"policy_enforcement": "always", "policy_audit_mode": False, "allow_localhost": "policy"}],
    TraceRequest: [{"src_pod": "default/client", "src_labels": ["app=client"], "dst_ip": "10.200.1.9", "dport": 80,
                    "protocol": "TCP"}, {"dst_pod": "default/web", "src_ip": "198.51.100.1", "dport": 0}],
    GcRequest: [{"valid_attachments": [{"containerID": "c1", "ifname": "eth0"}]}],
    ApplyRequest: [{"objects": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}]}],
    BackendStateRequest: [{"address": "10.200.1.9", "port": 80, "state": "quarantined"}],
}


@pytest.mark.parametrize("model", list(VALID), ids=lambda m: m.__name__)
def test_request_model_fails_only_with_validation_error(model: type[BaseModel]) -> None:
    for body in VALID[model]:
        model.model_validate(body)

    @FUZZ
    @given(mutated(VALID[model]))
    def run(body: Any) -> None:
        check(model, body)

    run()
    assert crashes_of_single_edits(VALID[model], lambda body: check(model, body)) == []


def check(model: type[BaseModel], body: Any) -> None:
    try:
        model.model_validate(body)
    except ValidationError as exc:
        assert all(error["loc"] or error["type"] == "model_type" for error in exc.errors()), exc  # names the field
