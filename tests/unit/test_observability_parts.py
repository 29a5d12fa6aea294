"""The flow exporter (line format, rotation, filters), API request timing, BPF map pressure and
policy map fill, and the agent's observability flags (errors name the flag)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.unit.test_hubble_convert import INGRESS, builder, record, tcp_v4

from cilia.agent.config import parse_config
from cilia.hubble.exporter import ExportFilterError, FlowExporter, RotatingFile, parse_filters
from cilia.metrics.api_timing import ApiTimer, api_histogram
from cilia.metrics.maps import MapCounter, MapFill, MapPressureCollector
from cilia.monitor.events import EVENT_DROP, EVENT_TRACE, decode

BASE = ["--node", "n1", "--ipv4-pod-cidr", "10.200.1.0/24"]


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}


# ----- exporter --------------------------------------------------------------------------------
def test_export_lines_are_hubble_export_events(tmp_path: Path) -> None:
    out = tmp_path / "hubble" / "events.log"
    exporter = FlowExporter(out)
    b = builder()
    exporter.consume(b.build(decode(record(EVENT_DROP, 133, tcp_v4(), direction=INGRESS, rule_id=5))))
    exporter.consume(b.build(decode(record(EVENT_TRACE, 0, tcp_v4(0x12)))))
    exporter.close()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 2 and all(set(line) == {"flow", "node_name", "time"} for line in lines)
    drop = lines[0]["flow"]
    assert lines[0]["node_name"] == "n1" and lines[0]["time"] == drop["time"]
    assert drop["verdict"] == "DROPPED" and drop["drop_reason_desc"] == "POLICY_DENIED"
    assert drop["l4"]["TCP"]["destination_port"] == 80 and drop["IP"]["ipVersion"] == "IPv4"  # proto names
    assert drop["source"]["pod_name"] == "client" and drop["event_type"]["type"] == 1
    assert drop["Type"] == "L3_L4" and drop["traffic_direction"] == "INGRESS"


def test_export_filters(tmp_path: Path) -> None:
    out = tmp_path / "events.log"
    exporter = FlowExporter(out, allow=parse_filters(['{"verdict":["DROPPED"]}'], "--hubble-export-allowlist"),
                            deny=parse_filters(['{"destination_port":["443"]}'], "--hubble-export-denylist"))
    b = builder()
    exporter.consume(b.build(decode(record(EVENT_DROP, 133, tcp_v4(), direction=INGRESS))))
    exporter.consume(b.build(decode(record(EVENT_DROP, 133, tcp_v4(dport=443), direction=INGRESS))))
    exporter.consume(b.build(decode(record(EVENT_TRACE, 0, tcp_v4()))))
    exporter.close()
    [line] = out.read_text().splitlines()
    assert json.loads(line)["flow"]["l4"]["TCP"]["destination_port"] == 80
    with pytest.raises(ExportFilterError, match="--hubble-export-allowlist"):
        parse_filters(["{verdict"], "--hubble-export-allowlist")
    with pytest.raises(ExportFilterError, match="--hubble-export-denylist"):
        parse_filters(['{"source_ip":["10.0.0.300"]}'], "--hubble-export-denylist")


def test_rotation_by_size_keeps_max_backups(tmp_path: Path) -> None:
    path = tmp_path / "flows.log"
    rotating = RotatingFile(path, max_bytes=100, max_backups=2)
    for n in range(20):
        rotating.write(f"{n:02d}" + "x" * 37)  # 40 bytes a line: two lines a file
    rotating.close()
    backups = rotating.backups()
    assert rotating.rotations == 9 and len(backups) == 2
    assert all(b.name.startswith("flows-") and b.suffix == ".log" for b in backups)
    assert all(b.stat().st_size <= 100 for b in [*backups, path])
    assert [line[:2] for line in path.read_text().splitlines()] == ["18", "19"]
    assert [line[:2] for line in backups[-1].read_text().splitlines()] == ["16", "17"]  # newest backup


# ----- API timing ------------------------------------------------------------------------------
def test_api_durations_by_route_template() -> None:
    router = APIRouter()

    @router.get("/v1/endpoints/{endpoint_id}")
    def endpoint(endpoint_id: int) -> dict[str, int]:
        return {"id": endpoint_id}

    app = FastAPI()
    app.include_router(router)
    registry = CollectorRegistry()
    client = TestClient(ApiTimer(app, api_histogram(registry)))  # type: ignore[arg-type]
    for n in range(3):
        assert client.get(f"/v1/endpoints/{n}").status_code == 200
    assert client.get("/v1/endpoints/x").status_code == 422
    assert client.get("/nowhere").status_code == 404
    got = samples(registry)
    name = "cilia_agent_api_process_time_seconds_count"
    assert got[(name, (("method", "GET"), ("path", "/v1/endpoints/{endpoint_id}"), ("return_code", "200")))] == 3
    assert got[(name, (("method", "GET"), ("path", "/v1/endpoints/{endpoint_id}"), ("return_code", "422")))] == 1
    assert got[(name, (("method", "GET"), ("path", "unmatched"), ("return_code", "404")))] == 1


# ----- map pressure ----------------------------------------------------------------------------
class FakeMap:
    def __init__(self, entries: int, max_entries: int) -> None:
        self.entries, self.max_entries = entries, max_entries
        self.walks = 0

    def keys(self) -> Any:
        self.walks += 1
        return iter(range(self.entries))


def test_map_pressure_and_policy_fill() -> None:
    ct, ipcache = FakeMap(250, 1000), FakeMap(3, 512)
    now = [0.0]
    counter = MapCounter(lambda: {"cilia_ct_tcp_v1": ct, "cilia_ipcache_v1": ipcache},  # type: ignore[dict-item]
                         ttl=10, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(MapPressureCollector(counter.fills, lambda: {7: 30, 12: 0}, 60))
    got = samples(registry)
    assert got[("cilia_bpf_map_pressure", (("map_name", "cilia_ct_tcp_v1"),))] == 0.25
    assert got[("cilia_bpf_map_pressure", (("map_name", "cilia_ipcache_v1"),))] == pytest.approx(3 / 512)
    assert got[("cilia_bpf_map_pressure", (("map_name", "cilia_policy_v1_00007"),))] == 0.5
    assert got[("cilia_policy_endpoint_map_entries", (("endpoint", "7"),))] == 30
    assert got[("cilia_policy_endpoint_map_max_entries", ())] == 60
    samples(registry)
    assert ct.walks == 1  # cached within the ttl
    now[0] = 11
    samples(registry)
    assert ct.walks == 2
    assert MapFill("m", 5, 0).pressure == 0.0


# ----- flags -----------------------------------------------------------------------------------
def test_flags_parse_into_the_config() -> None:
    config = parse_config([*BASE, "--prometheus-serve-addr", ":9962", "--hubble-metrics",
                           "flow,drop,tcp,policy:sourceContext=namespace|pod|identity;destinationContext=pod",
                           "--hubble-export-file-path", "/tmp/x.log", "--hubble-export-file-max-size-mb", "1",
                           "--hubble-export-allowlist", '{"verdict":["DROPPED"]}'])
    o = config.observability
    assert [s.name for s in o.hubble_metrics] == ["flow", "drop", "tcp", "policy"]
    assert o.export_file == Path("/tmp/x.log") and o.export_max_size_mb == 1 and o.export_max_backups == 5
    assert parse_config(BASE).observability.hubble_metrics == ()


@pytest.mark.parametrize(("args", "message"), [
    (["--prometheus-serve-addr", ":9962", "--hubble-metrics", "flow:sourceContext=nope"], "sourceContext=nope"),
    (["--hubble-metrics", "flow"], "--hubble-metrics needs --prometheus-serve-addr"),
    (["--prometheus-serve-addr", ":1", "--hubble-metrics", "flow", "--hubble-metrics", "flow"], "flow: given twice"),
    (["--hubble-export-allowlist", '{"verdict":["DROPPED"]}'], "need --hubble-export-file-path"),
    (["--hubble-export-file-path", "x", "--hubble-export-denylist", "nope"], "--hubble-export-denylist"),
    (["--hubble-export-file-max-size-mb", "-1"], "--hubble-export-file-max-size-mb"),
])
def test_flag_errors_name_the_flag(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config([*BASE, *args])
    assert message in capsys.readouterr().err
