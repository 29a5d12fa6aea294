"""The GetFlows filters where upstream's semantics are easy to get subtly wrong, pinned case by
case to what cilium's pkg/hubble/filters (v1.19) and the Kubernetes selector parser it uses do:
label selectors (Cilium's source prefixes, apimachinery's grammar and validation), IPs and
CIDRs as Go's netip parses them, ports as strconv.ParseUint, node-name and FQDN patterns."""

from __future__ import annotations

import pytest

from cilia.hubble.filters import FilterError, FlowFilters
from cilia.hubble.labels import LabelArray, SelectorError, parse_label, parse_selector, translate_selector
from cilia.hubble.pb import flow_pb2

FF = flow_pb2.FlowFilter
LABELS = LabelArray(["k8s:app=web", "k8s:tier=", "k8s:n=5", "container:app=other", "reserved:host",
                     "k8s:io.kubernetes.pod.namespace=team-a", "k8s:app.kubernetes.io/name=shop"])


# ----- label selectors ---------------------------------------------------------------------------
@pytest.mark.parametrize(("selector", "translated"), [
    ("app=web", "any.app=web"),
    ("k8s:app in (a, b), !reserved:host", "k8s.app in (a, b), !reserved.host"),
    ("!app", "!any.app"),
    ("  app  ", "  any.app  "),
    ("k8s:io.kubernetes.pod.namespace", "k8s.io.kubernetes.pod.namespace"),
    ("a in (x,y),b", "any.a in (x,y),any.b"),  # a comma inside () does not start a key
])
def test_cilium_source_prefix_translation(selector: str, translated: str) -> None:
    assert translate_selector(selector) == translated


@pytest.mark.parametrize(("selector", "matches"), [
    ("", True),  # the empty selector selects everything
    ("app", True),
    ("app=web", True),  # any source: k8s:app=web is the first app label
    ("app==web", True),
    ("k8s:app=web", True),
    ("container:app=other", True),
    ("container:app=web", False),
    ("reserved:app", False),
    ("app!=web", False),
    ("app!=nope", True),
    ("missing!=x", True),  # != and notin hold when the key is absent
    ("missing notin (x)", True),
    ("!missing", True),
    ("!app", False),
    ("app in (web, other)", True),
    ("app in (in, notin)", False),  # keywords are values inside ()
    ("app notin (web)", False),
    ("tier=", True),  # an empty value
    ("tier in ()", True),  # () is the empty value
    ("tier in (x,)", True),  # a trailing comma adds the empty value
    ("tier in (,x)", True),
    ("app in (x,)", False),
    ("tier notin ()", False),
    ("n>4", True),
    ("n>5", False),
    ("n<6", True),
    ("app>1", False),  # a non-integer label value never compares
    ("missing>1", False),
    ("app=web,n>4", True),  # comma is AND
    ("app=web,n>5", False),
    ("reserved:host", True),
    ("host", True),
    ("k8s:app.kubernetes.io/name=shop", True),
    ("app.kubernetes.io/name in (shop)", True),
    ("io.kubernetes.pod.namespace=team-a", True),
])
def test_selector_semantics(selector: str, matches: bool) -> None:
    assert parse_selector(selector)(LABELS) is matches


@pytest.mark.parametrize("selector", [
    "app in a",  # ( expected
    "app in (a b)",
    "app in (a",
    "app in (,,)",  # apimachinery: an identifier or ',' expected where ')' is
    "app in (a,,)",
    "app=(x)",
    "app=a=b",
    "!app=web",  # ! takes no operator
    "app,",  # an identifier must follow ','
    ",app",
    "app,,b",
    "=x",
    "app >",
    "n>x",  # Gt/Lt take an integer...
    "n>-3",  # ...that is also a valid label value
    "a b",
    "app$=x",  # keys are qualified names
    "k8s:Bad/Key=x",  # the prefix is a DNS subdomain
    "a/b/c",
    "app=" + "v" * 64,  # values are at most 63
    "app=-x",  # values start with an alphanumeric
    "app in (x y)",
    "app =! x",
])
def test_selector_errors(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(selector)
    with pytest.raises(FilterError, match="invalid label filter"):
        FlowFilters([FF(source_label=[selector])], [])


def test_flow_labels_parse_as_cilium() -> None:
    assert parse_label("k8s:app=web") == parse_label("k8s:app=web")
    assert (parse_label("$host").source, parse_label("$host").key) == ("reserved", "host")
    assert (parse_label("reserved.host").source, parse_label("reserved.host").key) == ("reserved", "host")
    assert parse_label("plain=1").source == "unspec"
    # the source is what comes before the first ':', even past an '=' (Cilium's ParseSource)
    odd = parse_label("a=b:c=d")
    assert (odd.source, odd.key, odd.value) == ("a=b", "c", "d")


# ----- IPs, ports, patterns ----------------------------------------------------------------------
def flow(ip: str = "10.200.1.2", node: str = "n1") -> flow_pb2.Flow:
    f = flow_pb2.Flow(node_name=node)
    f.IP.source = ip
    f.l4.TCP.destination_port = 80
    f.source_names.append("api.example.test")
    return f


@pytest.mark.parametrize(("wanted", "ip", "matches"), [
    ("10.200.1.2", "10.200.1.2", True),
    ("10.200.1.0/24", "10.200.1.2", True),
    ("10.200.1.9/24", "10.200.1.2", True),  # host bits may be set, as netip.ParsePrefix
    ("10.200.2.0/24", "10.200.1.2", False),
    ("0.0.0.0/0", "10.200.1.2", True),
    ("::/0", "10.200.1.2", False),  # a prefix never holds the other family
    ("fd00::/8", "fd00::3", True),
    ("fd00::3", "fd00:0::3", False),  # an exact address is compared as text, as upstream
])
def test_ip_and_cidr(wanted: str, ip: str, matches: bool) -> None:
    assert FlowFilters([FF(source_ip=[wanted])], []).matches(flow(ip)) is matches


@pytest.mark.parametrize("bad", ["10.0.0.0/255.255.255.0", "10.0.0.0/08", "10.0.0.0/33", "10.0.0.0/",
                                 "fe80::1%eth0/64", "10.0.0.0/+8", "10.0.0.0/\u0668", "10.0.0.256", "010.0.0.1",
                                 "not-an-ip"])
def test_ip_errors_as_netip(bad: str) -> None:
    with pytest.raises(FilterError):
        FlowFilters([FF(source_ip=[bad])], [])


def test_ports_as_parse_uint() -> None:
    assert FlowFilters([FF(destination_port=["080"])], []).matches(flow())  # leading zeros parse
    for bad in ("", "+80", "-1", "65536", "\uff18\uff10", "80 "):
        with pytest.raises(FilterError):
            FlowFilters([FF(destination_port=[bad])], [])


@pytest.mark.parametrize(("pattern", "node", "matches"), [
    ("n1", "n1", True),
    ("n*", "n1", True),
    ("default/n1", "n1", True),  # a node name without a cluster is in cluster default
    ("/n1", "n1", True),  # an empty cluster pattern matches every cluster
    ("default/", "n1", True),
    ("other/n1", "n1", False),
    ("*/n1", "c2/n1", True),
    ("c2/*", "c2/n1", True),
    ("N1", "n1", True),  # patterns are lower-cased
    ("n1.", "n1", True),  # one trailing dot is dropped
    ("n", "n1", False),  # a whole-name match
    ("*", "n1.example", True),
])
def test_node_name_patterns(pattern: str, node: str, matches: bool) -> None:
    assert FlowFilters([FF(node_name=[pattern])], []).matches(flow(node=node)) is matches


@pytest.mark.parametrize("bad", ["", "a/b/c", "n1..", "n_1!", "n\u0661"])
def test_node_name_pattern_errors(bad: str) -> None:
    with pytest.raises(FilterError):
        FlowFilters([FF(node_name=[bad])], [])


@pytest.mark.parametrize(("pattern", "matches"), [
    ("api.example.test", True), ("*.example.test", True), ("API.example.test.", True), ("*.test", True),
    ("example.test", False), ("api.*", True)])
def test_fqdn_globs(pattern: str, matches: bool) -> None:
    assert FlowFilters([FF(source_fqdn=[pattern])], []).matches(flow()) is matches
