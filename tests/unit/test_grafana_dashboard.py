"""examples/grafana-dashboard.json is importable (Grafana's dashboard shape with a datasource
input), each panel's PromQL parses (promtool, Debian's prometheus package) and names only
families the agent serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json"
SERVED = {"cilia_drop_count_total", "cilia_forward_count_total", "hubble_flows_processed_total", "hubble_drop_total",
          "hubble_policy_verdicts_total", "hubble_tcp_flags_total", "cilia_bpf_map_pressure",
          "cilia_agent_api_process_time_seconds_bucket", "cilia_endpoint_regeneration_time_stats_seconds_bucket",
          "cilia_endpoint_regenerations_total", "cilia_endpoint_state", "cilia_events_lost_total",
          "hubble_lost_events_total"}


def exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p["targets"]]


def test_dashboard_shape() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert data["__inputs"][0]["name"] == "DS_PROMETHEUS" and data["uid"] and data["panels"]
    assert len({p["id"] for p in data["panels"]}) == len(data["panels"])
    names = {name for e in exprs() for name in re.findall(r"\b((?:cilia|hubble)_[a-z_]+)\b", e)}
    assert names <= SERVED, names - SERVED


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) not installed")
def test_every_panel_query_parses(tmp_path: Path) -> None:
    rules = [{"record": f"cilia:panel_{i}", "expr": e.replace("$__rate_interval", "1m").replace("$instance", ".*")}
             for i, e in enumerate(exprs())]
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
