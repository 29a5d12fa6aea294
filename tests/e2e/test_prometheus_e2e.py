"""Observability end to end on a lab of its own: agents with Hubble flow metrics, map pressure,
API durations and a flow export file; a real Prometheus (Debian's) in node n1's network namespace
scrapes n1's agent, and a PromQL query through its HTTP API returns the drops a denied probe
caused (the datapath's counter and Hubble's flow metric, by pod). The export file holds the
denied probe's drops as Hubble export events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cilia.lab.lab import PYTHON, Lab
from cilia.testing import wait_for
from cilia.testing.labs import BASIC, client_denied_to_web, running_lab
from cilia.testing.prometheus import Prometheus, prometheus_in

ADDRESS = "127.0.0.1:9962"
METRICS = ("flow tcp drop:sourceContext=pod|reserved-identity;destinationContext=pod "
           "policy:sourceContext=namespace|pod|identity;destinationContext=pod;labelsContext=source_pod,"
           "traffic_direction")
FETCH = ("import sys, urllib.request; "
         f"sys.stdout.write(urllib.request.urlopen('http://{ADDRESS}/metrics', timeout=5).read().decode())")
DENIED_DROPS = 'sum(cilia_drop_count_total{reason="POLICY_DENIED",direction="INGRESS"})'
HUBBLE_DROPS = 'sum(hubble_drop_total{reason="POLICY_DENIED",source="default/client",destination="default/web"})'
HUBBLE_VERDICTS = ('sum(hubble_policy_verdicts_total{action="dropped",direction="ingress",source="default",'
                   'source_pod="client",destination="default/web"})')


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def denied(export_dir: Path) -> Iterator[Lab]:
    args = ["--prometheus-serve-addr", ADDRESS, "--hubble-metrics", METRICS,
            "--hubble-export-file-path", str(export_dir / "flows.log"),
            "--hubble-export-allowlist", '{"verdict":["DROPPED"]}']
    with running_lab(BASIC, agent_args=args) as lab, client_denied_to_web(lab) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(denied: Lab) -> Iterator[Prometheus]:
    with prometheus_in(denied, "n1", [ADDRESS]) as server:
        yield server


def test_promql_returns_the_drops_a_denied_probe_caused(denied: Lab, prometheus: Prometheus) -> None:
    def values() -> tuple[float, float, float]:
        return (prometheus.value(DENIED_DROPS) or 0.0, prometheus.value(HUBBLE_DROPS) or 0.0,
                prometheus.value(HUBBLE_VERDICTS) or 0.0)

    before = values()
    probes = 3
    for _ in range(probes):
        assert denied.probe("client", "web", 80, timeout=1.0)["verdict"] != "connected"
    # each denied connect is one verdict and at least one dropped SYN (retransmissions add more)
    after = wait_for(lambda: (v := values())[0] >= before[0] + probes and v[1] >= before[1] + probes
                     and v[2] >= before[2] + probes and v, 30, 0.5,
                     lambda: f"Prometheus did not see {probes} more denied drops: before {before}, now {values()}")
    assert after
    by_reason = prometheus.query('sum by (reason) (hubble_drop_total{destination="default/web"})')
    assert {r["metric"]["reason"] for r in by_reason} <= {"POLICY_DENIED", "POLICY_DENY"}
    flows = prometheus.value('sum(hubble_flows_processed_total{type="Trace",verdict="FORWARDED"})')
    assert flows and flows > 0
    assert prometheus.value('sum(hubble_tcp_flags_total{flag="SYN",family="IPv4"})')


def scrape(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    result = lab.exec("n1", [PYTHON, "-c", FETCH], timeout=30)
    assert result.returncode == 0, result.stderr[-2000:]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(result.stdout) for s in family.samples}


def test_map_pressure_policy_fill_and_api_durations(denied: Lab) -> None:
    samples = scrape(denied)
    pressure = {dict(labels)["map_name"]: v for (name, labels), v in samples.items()
                if name == "cilia_bpf_map_pressure"}
    assert 0 < pressure["cilia_ct_tcp_v1"] < 1 and 0 < pressure["cilia_ipcache_v1"] < 1
    assert {"cilia_ct_any_v1", "cilia_lb_services_v1", "cilia_lb_backends_v1", "cilia_policy_v1"} <= set(pressure)
    per_endpoint = {k: v for k, v in pressure.items() if k.startswith("cilia_policy_v1_")}
    assert len(per_endpoint) == len(denied.state["pods"]) and any(v > 0 for v in per_endpoint.values())
    entries = [v for (name, _), v in samples.items() if name == "cilia_policy_endpoint_map_entries"]
    assert len(entries) == len(per_endpoint) and max(entries) > 0
    applied = [v for (name, labels), v in samples.items() if name == "cilia_agent_api_process_time_seconds_count"
               and dict(labels).get("path") == "/v1/resources/apply" and dict(labels)["method"] == "POST"]
    assert applied and sum(applied) >= 1, "the policy apply is timed"


def test_export_file_holds_the_denied_drops(denied: Lab, export_dir: Path) -> None:
    path = export_dir / "flows.log"

    def drops() -> list[dict[str, object]]:
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in events if e["flow"]["destination"].get("pod_name") == "web"]  # type: ignore[index]

    assert denied.probe("client", "web", 80, timeout=1.0)["verdict"] != "connected"
    got = wait_for(drops, 10, 0.2, lambda: f"no exported drop to web in {path}")
    event = got[-1]
    assert set(event) == {"flow", "node_name", "time"} and event["node_name"] == "n1"
    flow = event["flow"]
    assert isinstance(flow, dict) and flow["verdict"] == "DROPPED" and flow["source"]["pod_name"] == "client"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert all(e["flow"]["verdict"] == "DROPPED" for e in lines), "the allowlist lets only drops through"
