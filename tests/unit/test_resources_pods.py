"""One reading of a stored Pod for every engine (policy named ports, LB selection, identity labels)."""

from __future__ import annotations

from cilia import ipproto
from cilia.lb.model import L4Protocol
from cilia.lb.pods import named_ports as lb_named_ports
from cilia.policy.engine import named_ports as policy_named_ports
from cilia.resources.pods import ContainerPort, read_pod

POD = {
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "deletionTimestamp": "now"},
    "spec": {"serviceAccountName": "front", "containers": [
        {"name": "a", "ports": [{"name": "http", "containerPort": 8080},
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"containerPort": 9000}]},
        {"name": "b", "ports": [{"name": "assoc", "containerPort": 3868, "protocol": "SCTP"}]},
    ]},
    "status": {"conditions": [{"type": "Ready", "status": "False"}]},
}


def test_read_pod_facts_and_defaults() -> None:
    facts = read_pod(POD)
    assert (facts.namespace, facts.name, facts.service_account) == ("shop", "web", "front")
    assert dict(facts.labels) == {"app": "web"}
    assert not facts.ready and facts.terminating
    assert facts.ports[2] == ContainerPort("", ipproto.TCP, 9000)
    bare = read_pod({"metadata": {"name": "p"}})
    assert (bare.namespace, bare.service_account, bare.ports, bare.ready, bare.terminating) == \
        ("default", "default", (), True, False)


def test_policy_and_lb_agree_on_named_ports() -> None:
    assert policy_named_ports(POD) == {"http": {(6, 8080)}, "dns": {(17, 53)}, "assoc": {(132, 3868)}}
    # services only carry TCP and UDP
    assert lb_named_ports(read_pod(POD)) == {("http", L4Protocol.TCP): 8080, ("dns", L4Protocol.UDP): 53}
    assert policy_named_ports(None) == {}
