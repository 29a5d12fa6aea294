"""`cilia observe` as a Hubble client: its flags as a GetFlowsRequest (observe's semantics in
Hubble's filters), and the command against a real Observer server on a unix socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.test_hubble_convert import INGRESS, builder, record, tcp_v4, udp_v4
from typer.testing import CliRunner

from cilia.cli.main import app
from cilia.cli.observe_request import ALL, ObserveArgs, ObserveArgumentError, build_request, client_side_match
from cilia.flows.ring import FlowRing
from cilia.hubble.convert import convert
from cilia.hubble.filters import FlowFilters
from cilia.hubble.pb import flow_pb2
from cilia.hubble.server import HubbleConfig, HubbleServer
from cilia.monitor.events import EVENT_DROP, EVENT_POLICY_VERDICT, EVENT_TRACE, decode

RAW = [record(EVENT_TRACE, 0, tcp_v4(0x02)), record(EVENT_TRACE, 0, udp_v4()),
       record(EVENT_DROP, 133, tcp_v4(), direction=INGRESS), record(EVENT_DROP, 158, tcp_v4(dport=8080)),
       record(EVENT_POLICY_VERDICT, 2, tcp_v4(), direction=INGRESS, rule_id=5),
       record(EVENT_POLICY_VERDICT, 3, tcp_v4(), direction=INGRESS)]


def messages() -> list[flow_pb2.Flow]:
    b = builder()
    return [convert(b.build(decode(raw))) for raw in RAW]


def selected(args: ObserveArgs) -> list[flow_pb2.Flow]:
    request = build_request(args)
    filters = FlowFilters(request.whitelist, request.blacklist)
    return [f for f in messages() if filters.matches(f) and client_side_match(args, f)]


def test_either_side_flags_and_and_between_flags() -> None:
    got = selected(ObserveArgs(pod=["client"], protocol=["udp"]))
    assert [f.l4.WhichOneof("protocol") for f in got] == ["UDP"]
    assert len(build_request(ObserveArgs(pod=["x/client"], port=["80"])).whitelist) == 4
    got = selected(ObserveArgs(pod=["x/server"], verdict=["dropped"]))
    assert got and all(f.verdict == flow_pb2.DROPPED for f in got)
    assert selected(ObserveArgs(namespace=["nope"])) == []
    assert len(selected(ObserveArgs(namespace=["x"]))) == len(RAW)
    got = selected(ObserveArgs(from_pod=["client"], pod=["server"], port=["8080"]))
    assert [f.l4.TCP.destination_port for f in got] == [8080]
    assert build_request(ObserveArgs()).whitelist == [] and build_request(ObserveArgs()).number == 20


def test_drop_reason_by_hubble_or_cilia_name_and_policy() -> None:
    assert [f.drop_reason_desc for f in selected(ObserveArgs(drop_reason=["NO_SERVICE"]))] == \
        [flow_pb2.SERVICE_BACKEND_NOT_FOUND]
    assert len(selected(ObserveArgs(drop_reason=["POLICY_DENIED"]))) == 2  # the drop and the default-deny verdict
    named = selected(ObserveArgs(policy=["x/deny-client"]))
    assert [f.event_type.type for f in named] == [5]
    default = selected(ObserveArgs(policy=["default-deny"]))
    assert {f.event_type.type for f in default} == {1, 5} and all(not f.ingress_denied_by for f in default)
    assert build_request(ObserveArgs(policy=["x"])).number == ALL


@pytest.mark.parametrize(("args", "flag"), [
    (ObserveArgs(verdict=["maybe"]), "--verdict 'maybe'"), (ObserveArgs(port=["http"]), "--port 'http'"),
    (ObserveArgs(drop_reason=["NOPE"]), "--drop-reason"),
    (ObserveArgs(traffic_direction=["up"]), "--traffic-direction"),
    (ObserveArgs(label=["=x"]), "--label"),
])
def test_bad_values_name_the_flag(args: ObserveArgs, flag: str) -> None:
    with pytest.raises(ObserveArgumentError, match=flag.replace("'", ".")):
        build_request(args)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HubbleServer]:
    ring = FlowRing(64)
    b = builder()
    for raw in RAW:
        ring.add(b.build(decode(raw)))
    s = HubbleServer(HubbleConfig("n1", tmp_path / "hubble.sock", 64), ring)
    s.start()
    yield s
    s.stop(0)


def test_observe_reads_the_observer_api(server: HubbleServer) -> None:
    runner = CliRunner()
    socket = str(server.config.socket)
    out = runner.invoke(app, ["observe", "--socket", socket, "-o", "json", "--verdict", "DROPPED", "--last", "2"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2 and all(set(line) >= {"flow", "node_name", "time"} for line in lines)
    assert all(line["flow"]["verdict"] == "DROPPED" and line["node_name"] == "n1" for line in lines)
    compact = runner.invoke(app, ["observe", "--socket", socket, "--pod", "x/client", "--protocol", "tcp"])
    assert compact.exit_code == 0, compact.output
    assert "x/client:40000 (ID:256) -> x/server:80 (ID:257)" in compact.stdout
    assert "policy-verdict:ingress DROPPED" in compact.stdout and "<> x/server:80" in compact.stdout
    table = runner.invoke(app, ["observe", "--socket", socket, "-o", "table", "--policy", "deny-client"])
    assert table.exit_code == 0 and "DROPPED" in table.stdout and "TIMESTAMP" in table.stdout
    bad = runner.invoke(app, ["observe", "--socket", socket, "--verdict", "maybe"])
    assert bad.exit_code == 1 and "--verdict" in bad.output
    gone = runner.invoke(app, ["observe", "--socket", socket + ".nope"])
    assert gone.exit_code == 1 and "UNAVAILABLE" in gone.output


def _named_flow() -> flow_pb2.Flow:
    """A pod's connection to an IP its DNS history names (cilia.fqdn.history via FlowBuilder)."""
    b = builder()
    b._names = lambda ep, ip: ["api.example.test", "www.example.test"] if ip == "10.200.1.3" else []
    flow = convert(b.build(decode(record(EVENT_TRACE, 0, tcp_v4(0x02)))))
    flow.destination.ClearField("pod_name")  # an external address: only its names say what it is
    return flow


def test_names_in_the_compact_line_and_the_fqdn_flags() -> None:
    from cilia.cli.observe import compact_line

    flow = _named_flow()
    assert list(flow.destination_names) == ["api.example.test", "www.example.test"] and not flow.source_names
    assert " -> api.example.test,www.example.test:80 (ID:" in compact_line(flow)
    for args, hit in ((ObserveArgs(to_fqdn=["api.example.test"]), True),
                      (ObserveArgs(to_fqdn=["*.example.test"]), True),
                      (ObserveArgs(from_fqdn=["api.example.test"]), False),
                      (ObserveArgs(fqdn=["www.example.test"]), True),
                      (ObserveArgs(to_fqdn=["other.example.test"]), False)):
        request = build_request(args)
        assert FlowFilters(request.whitelist, request.blacklist).matches(flow) is hit, args
    with pytest.raises(ObserveArgumentError, match="--fqdn cannot be combined"):
        build_request(ObserveArgs(fqdn=["a.test"], to_fqdn=["b.test"]))
