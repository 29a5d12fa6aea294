"""What the service map page gets of a flow (cilia.relay.web.flow_json): map nodes for pods,
reserved entities and world peers by IP, the service a flow went through, ports, flags, verdict."""

from __future__ import annotations

from cilia.hubble.pb import flow_pb2
from cilia.relay.web import flow_json


def test_pod_to_service_backend() -> None:
    flow = flow_pb2.Flow(verdict=flow_pb2.DROPPED, drop_reason_desc=flow_pb2.POLICY_DENIED, node_name="n2",
                         uuid="u1", Summary="s")
    flow.time.FromNanoseconds(1_700_000_000 * 10**9)
    flow.IP.source, flow.IP.destination = "10.200.1.5", "10.200.2.7"
    flow.l4.TCP.source_port, flow.l4.TCP.destination_port = 40000, 80
    flow.l4.TCP.flags.SYN = True
    flow.source.namespace, flow.source.pod_name = "default", "client"
    flow.destination.namespace, flow.destination.pod_name = "default", "web"
    flow.destination.labels.append("k8s:app=web")
    flow.destination_service.namespace, flow.destination_service.name = "default", "web-svc"
    flow.event_type.type = 1
    flow.is_reply.value = False
    out = flow_json(flow)
    assert out["source"]["id"] == "default/client" and out["destination"]["id"] == "default/web"
    assert out["destination"]["labels"] == ["k8s:app=web"] and out["destination"]["kind"] == "pod"
    assert (out["verdict"], out["drop_reason"], out["type"], out["node"]) == ("DROPPED", "POLICY_DENIED", "drop", "n2")
    assert (out["protocol"], out["source_port"], out["destination_port"]) == ("TCP", 40000, 80)
    assert out["tcp_flags"] == ["SYN"]
    assert out["service"] == "default/web-svc" and out["is_reply"] is False
    assert out["time"] == "2023-11-14T22:13:20Z"


def test_world_host_and_icmp() -> None:
    flow = flow_pb2.Flow(verdict=flow_pb2.FORWARDED)
    flow.IP.source, flow.IP.destination = "198.51.100.10", "192.0.2.11"
    flow.source.labels.append("reserved:world")
    flow.destination.labels.append("reserved:host")
    flow.l4.ICMPv6.type = 135
    out = flow_json(flow)
    assert (out["source"]["id"], out["source"]["kind"], out["source"]["name"]) == \
        ("world:198.51.100.10", "world", "198.51.100.10")
    assert (out["destination"]["id"], out["destination"]["kind"]) == ("host", "host")
    assert (out["protocol"], out["icmp_type"], out["is_reply"], out["service"]) == ("ICMPv6", 135, None, "")
