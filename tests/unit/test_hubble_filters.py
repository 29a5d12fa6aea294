"""Whitelist/blacklist FlowFilters with Hubble's semantics (cilium pkg/hubble/filters), including
the filter shapes the hubble CLI builds for its flags (--pod, --namespace, --label, --port)."""

from __future__ import annotations

import pytest

from cilia.hubble.filters import FilterError, FlowFilters, parse_namespaced_name
from cilia.hubble.labels import LabelArray, SelectorError, parse_selector
from cilia.hubble.pb import flow_pb2

FF = flow_pb2.FlowFilter


def tcp_flow(**kw: object) -> flow_pb2.Flow:
    f = flow_pb2.Flow(uuid="tcp-1", verdict=flow_pb2.FORWARDED, node_name="n1", traffic_direction=flow_pb2.EGRESS)
    f.IP.source, f.IP.destination, f.IP.ipVersion = "10.200.1.2", "10.200.2.3", flow_pb2.IPv4
    f.l4.TCP.source_port, f.l4.TCP.destination_port = 40000, 80
    f.l4.TCP.flags.SYN = f.l4.TCP.flags.ACK = True
    f.source.namespace, f.source.pod_name, f.source.identity = "x", "client-7f9", 256
    f.source.labels.extend(["k8s:app=client", "k8s:tier=1", "k8s:io.kubernetes.pod.namespace=x"])
    f.destination.namespace, f.destination.pod_name, f.destination.identity = "y", "server", 257
    f.destination.labels.extend(["k8s:app=server"])
    f.event_type.type, f.event_type.sub_type = 4, 0
    f.is_reply.value = False
    for key, value in kw.items():
        setattr(f, key, value)
    return f


def drop_flow() -> flow_pb2.Flow:
    f = flow_pb2.Flow(uuid="drop-1", verdict=flow_pb2.DROPPED, drop_reason_desc=flow_pb2.POLICY_DENIED,
                      node_name="n1", traffic_direction=flow_pb2.INGRESS)
    f.IP.source, f.IP.destination = "10.200.1.2", "fd00::3"
    f.l4.ICMPv6.type = 128
    f.source.namespace, f.source.pod_name = "x", "client-7f9"
    f.source.labels.append("reserved:world")
    f.event_type.type, f.event_type.sub_type = 1, 133
    return f


TCP, DROP = tcp_flow(), drop_flow()


def matching(whitelist: list[flow_pb2.FlowFilter], blacklist: list[flow_pb2.FlowFilter] | None = None) -> set[str]:
    filters = FlowFilters(whitelist, blacklist or [])
    return {f.uuid for f in (TCP, DROP) if filters.matches(f)}


def test_empty_lists_match_everything_and_blacklist_excludes() -> None:
    assert matching([]) == {"tcp-1", "drop-1"}
    assert matching([], [FF(verdict=[flow_pb2.DROPPED])]) == {"tcp-1"}
    assert matching([FF()]) == {"tcp-1", "drop-1"}  # an empty filter matches all


def test_fields_within_a_filter_and_values_within_a_field() -> None:
    assert matching([FF(source_pod=["x/client"], verdict=[flow_pb2.DROPPED])]) == {"drop-1"}  # AND
    assert matching([FF(verdict=[flow_pb2.DROPPED, flow_pb2.FORWARDED])]) == {"tcp-1", "drop-1"}  # OR in a field
    assert matching([FF(verdict=[flow_pb2.DROPPED]), FF(destination_port=["80"])]) == {"tcp-1", "drop-1"}  # OR
    assert matching([FF(source_pod=["x/"])], [FF(destination_port=["80"])]) == {"drop-1"}  # whitelist - blacklist


def test_pod_names_are_prefixes_within_a_namespace() -> None:
    assert matching([FF(source_pod=["x/client"])]) == {"tcp-1", "drop-1"}
    assert matching([FF(source_pod=["x/client-7f9"])]) == {"tcp-1", "drop-1"}
    assert matching([FF(source_pod=["x/server"])]) == set()
    assert matching([FF(source_pod=["client"])]) == set()  # namespace "default"
    assert matching([FF(source_pod=["/client"])]) == {"tcp-1", "drop-1"}  # any namespace
    assert matching([FF(destination_pod=["y/"])]) == {"tcp-1"}  # a whole namespace
    assert parse_namespaced_name("a/b") == ("a", "b") and parse_namespaced_name("b") == ("default", "b")
    with pytest.raises(FilterError):
        FlowFilters([FF(source_pod=[""])], [])


def test_cli_shapes_pod_and_namespace() -> None:
    # hubble observe --pod y/server: the left filter on the source, the right on the destination
    assert matching([FF(source_pod=["y/server"]), FF(destination_pod=["y/server"])]) == {"tcp-1"}
    # hubble observe --namespace x: source_pod ["x/"] OR destination_pod ["x/"]
    assert matching([FF(source_pod=["x/"]), FF(destination_pod=["x/"])]) == {"tcp-1", "drop-1"}
    assert matching([FF(source_pod=["y/"]), FF(destination_pod=["y/"])]) == {"tcp-1"}


def test_ips_exact_and_cidr() -> None:
    assert matching([FF(source_ip=["10.200.1.2"])]) == {"tcp-1", "drop-1"}
    assert matching([FF(destination_ip=["10.200.0.0/16"])]) == {"tcp-1"}
    assert matching([FF(destination_ip=["fd00::/64"])]) == {"drop-1"}
    assert matching([FF(destination_ip=["10.200.2.4"])]) == set()
    with pytest.raises(FilterError):
        FlowFilters([FF(source_ip=["10.0.0.300"])], [])


def test_labels_are_kubernetes_selectors_with_cilium_sources() -> None:
    assert matching([FF(source_label=["app=client"])]) == {"tcp-1"}
    assert matching([FF(source_label=["k8s:app=client"])]) == {"tcp-1"}
    assert matching([FF(source_label=["reserved:app=client"])]) == set()
    assert matching([FF(source_label=["app in (client, other)"])]) == {"tcp-1"}
    assert matching([FF(source_label=["app notin (client)"])]) == {"drop-1"}
    assert matching([FF(source_label=["app!=client"])]) == {"drop-1"}
    assert matching([FF(source_label=["!app"])]) == {"drop-1"}
    assert matching([FF(source_label=["reserved:world"])]) == {"drop-1"}
    assert matching([FF(source_label=["app=client,tier>0"])]) == {"tcp-1"}
    assert matching([FF(source_label=["app=client,tier=2"])]) == set()  # comma is AND
    assert matching([FF(source_label=["app=nope", "tier"])]) == {"tcp-1"}  # selectors in a list: OR
    assert matching([FF(destination_label=["k8s:app=server"])]) == {"tcp-1"}
    with pytest.raises(FilterError):
        FlowFilters([FF(source_label=["app in client"])], [])


def test_selector_parser_details() -> None:
    labels = LabelArray(["k8s:io.kubernetes.pod.namespace=x", "reserved:host", "$health", "plain=1"])
    assert parse_selector("io.kubernetes.pod.namespace=x")(labels)
    assert parse_selector("k8s:io.kubernetes.pod.namespace==x")(labels)
    assert parse_selector("reserved:host")(labels) and parse_selector("reserved:health")(labels)
    assert parse_selector("unspec:plain=1")(labels) and not parse_selector("k8s:plain")(labels)
    for bad in ("app in (a", "=x", "app >", "a b"):
        with pytest.raises(SelectorError):
            parse_selector(bad)


def test_identity_port_protocol() -> None:
    assert matching([FF(source_identity=[256])]) == {"tcp-1"}
    assert matching([FF(destination_identity=[257, 258])]) == {"tcp-1"}
    # hubble observe --port 80: source_port [80] OR destination_port [80]; ICMP has no port
    assert matching([FF(source_port=["80"]), FF(destination_port=["80"])]) == {"tcp-1"}
    assert matching([FF(source_port=["40000"])]) == {"tcp-1"}
    assert matching([FF(protocol=["TCP"])]) == {"tcp-1"}
    assert matching([FF(protocol=["icmp"])]) == {"drop-1"}
    assert matching([FF(protocol=["icmpv4"])]) == set()
    assert matching([FF(protocol=["udp", "icmpv6"])]) == {"drop-1"}
    assert matching([FF(protocol=["http"])]) == set()
    for bad in (FF(protocol=["tcpx"]), FF(destination_port=["http"]), FF(source_port=["70000"])):
        with pytest.raises(FilterError):
            FlowFilters([bad], [])


def test_verdict_drop_reason_event_type() -> None:
    assert matching([FF(verdict=[flow_pb2.DROPPED])]) == {"drop-1"}
    assert matching([FF(drop_reason_desc=[flow_pb2.POLICY_DENIED])]) == {"drop-1"}
    assert matching([FF(drop_reason_desc=[flow_pb2.POLICY_DENY])]) == set()
    # --type drop / --type trace / --type trace:to-endpoint / --type policy-verdict
    assert matching([FF(event_type=[flow_pb2.EventTypeFilter(type=1)])]) == {"drop-1"}
    assert matching([FF(event_type=[flow_pb2.EventTypeFilter(type=4)])]) == {"tcp-1"}
    assert matching([FF(event_type=[flow_pb2.EventTypeFilter(type=4, match_sub_type=True, sub_type=0)])]) == {"tcp-1"}
    assert matching([FF(event_type=[flow_pb2.EventTypeFilter(type=4, match_sub_type=True, sub_type=3)])]) == set()
    assert matching([FF(event_type=[flow_pb2.EventTypeFilter(type=5)])]) == set()


def test_tcp_flags_node_direction_reply_uuid() -> None:
    assert matching([FF(tcp_flags=[flow_pb2.TCPFlags(SYN=True)])]) == {"tcp-1"}  # has SYN (and ACK)
    assert matching([FF(tcp_flags=[flow_pb2.TCPFlags(SYN=True, FIN=True)])]) == set()  # needs both
    assert matching([FF(tcp_flags=[flow_pb2.TCPFlags(FIN=True), flow_pb2.TCPFlags(ACK=True)])]) == {"tcp-1"}
    assert matching([FF(node_name=["n1"])]) == {"tcp-1", "drop-1"}
    assert matching([FF(node_name=["default/n*"])]) == {"tcp-1", "drop-1"}
    assert matching([FF(node_name=["other/n1"])]) == set()
    assert matching([FF(node_name=["n2"])]) == set()
    assert matching([FF(traffic_direction=[flow_pb2.INGRESS])]) == {"drop-1"}
    # a dropped flow with unknown is_reply counts as not a reply (Hubble's compatibility rule)
    assert matching([FF(reply=[False])]) == {"tcp-1", "drop-1"}
    assert matching([FF(reply=[True])]) == set()
    assert matching([FF(uuid=["drop-1"])]) == {"drop-1"}
    assert matching([FF(ip_version=[flow_pb2.IPv4])]) == {"tcp-1"}


def test_l7_filters_never_match_l3_flows_and_need_an_l7_type() -> None:
    assert matching([FF(http_method=["GET"])]) == set()
    assert matching([FF(http_status_code=["4+"])]) == set()
    with pytest.raises(FilterError):
        FlowFilters([FF(http_method=["GET"], event_type=[flow_pb2.EventTypeFilter(type=1)])], [])
    with pytest.raises(FilterError):
        FlowFilters([FF(http_status_code=["99"])], [])
    with pytest.raises(FilterError):
        FlowFilters([FF(experimental=FF.Experimental(cel_expression=["true"]))], [])
