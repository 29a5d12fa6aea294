"""The agent through the `cilia` CLI: apply/delete YAML, live relabel -> new identity, map dumps, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.lab.lab import Lab, namespace_object, pod_object
from cilia.lab.topology import load_topology
from cilia.paths import NodePaths
from cilia.testing import wait_for
from cilia.testing.labs import BASIC

CILIA = os.path.join(os.path.dirname(sys.executable), "cilia")


def cilia(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([CILIA, *args, *(["--node", "n1"] if args[0] not in ("lab",) else [])],
                            capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"cilia {' '.join(args)}: {result.stderr}")
    return result


def cilia_json(*args: str) -> Any:
    return json.loads(cilia(*args, "-o", "json").stdout)


def endpoint(name: str) -> dict[str, Any]:
    return next(e for e in cilia_json("endpoint", "list") if e["pod_name"] == name)


@pytest.fixture
def restore_labels(lab: Lab) -> Iterator[None]:
    """The relabel tests change db's and team-a's labels on the module's shared lab: put the labels of
    examples/lab-basic.yaml back afterwards, so that no test here sees another's change (each passes
    or fails alone, in any order) and each relabel test starts from the labels it assumes."""
    topology = load_topology(BASIC)
    originals = [namespace_object("team-a", topology.namespaces["team-a"]),
                 *(pod_object(p) for p in topology.pods if (p.namespace, p.name) == ("team-a", "db"))]

    def current() -> list[str]:
        return sorted(endpoint("db")["labels"])

    before = current()
    try:
        yield
    finally:
        with AgentClient(NodePaths("n1").socket) as client:
            client.apply(ApplyRequest(objects=originals))
        wait_for(lambda: current() == before, 10, 0.1, lambda: f"db's labels not restored: {current()} != {before}")


def test_relabel_pod_gives_a_new_identity_live(lab: Lab, tmp_path: Path, restore_labels: None) -> None:
    before = endpoint("db")
    manifest = tmp_path / "db.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db\n  namespace: team-a\n  labels: {app: db, tier: gold}\n"
    )
    assert "pod/db configured" in cilia("apply", "-f", str(manifest)).stdout
    after = endpoint("db")
    assert after["identity"] != before["identity"] and "k8s:tier=gold" in after["labels"]
    ipcache = {row["prefix"]: row["identity"] for row in cilia_json("bpf", "ipcache", "list")}
    assert ipcache[f"{after['ipv4']}/32"] == after["identity"]  # the datapath knows the new identity
    identity = cilia_json("identity", "get", str(after["identity"]))
    assert "k8s:tier=gold" in identity["labels"]
    assert lab.probe("client", "db", 5432)["verdict"] == "connected"


def test_bad_yaml_is_rejected_and_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    before = endpoint("web")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: 'no spaces allowed'}\n")
    result = cilia("apply", "-f", str(bad), check=False)
    assert result.returncode != 0 and "metadata.labels.app" in result.stderr
    missing_ns = tmp_path / "ns.yaml"
    missing_ns.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: nowhere}\n")
    result = cilia("apply", "-f", str(missing_ns), check=False)
    assert result.returncode != 0 and "namespace 'nowhere' does not exist" in result.stderr
    assert endpoint("web") == before


def test_status_and_map_dumps(lab: Lab) -> None:
    status = cilia_json("status")
    assert status["node"] == "n1" and status["endpoints"] == 3
    assert lab.probe("client", "web", 80)["verdict"] == "connected"
    ct = cilia_json("bpf", "ct", "list")
    assert any(row["destination"].endswith(":80") and row["proto"] == "TCP" for row in ct)
    endpoints = cilia_json("bpf", "endpoint", "list")
    assert {row["ip"] for row in endpoints} >= {endpoint("web")["ipv4"], endpoint("web")["ipv6"]}
    metrics = cilia_json("bpf", "metrics", "list")
    assert any(row["reason"] == "FORWARDED" and row["packets"] > 0 for row in metrics)
    assert "ID" in cilia("endpoint", "list").stdout  # the table form for people


def test_namespace_relabel_moves_its_pods_to_a_new_identity(lab: Lab, tmp_path: Path,
                                                            restore_labels: None) -> None:
    before, client_before = endpoint("db"), endpoint("client")
    manifest = tmp_path / "ns.yaml"
    manifest.write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n  labels: {team: a, env: prod}\n")
    cilia("apply", "-f", str(manifest))
    after = endpoint("db")
    assert after["identity"] != before["identity"]
    assert "k8s:io.cilium.k8s.namespace.labels.env=prod" in after["labels"]
    assert endpoint("client")["identity"] == client_before["identity"]  # other namespaces untouched


def test_api_rejects_unknown_fields_naming_them(lab: Lab) -> None:
    from cilia.api.client import AgentClient, AgentError
    from cilia.paths import NodePaths

    with AgentClient(NodePaths("n1").socket) as client:
        with pytest.raises(AgentError, match=r"containr_id|container_id"):
            client._request("POST", "/v1/endpoints", json={"containr_id": "x", "netns": "/run/netns/x"})
        spec = client.get("/openapi.json")
    assert "/v1/endpoints" in spec["paths"] and spec["info"]["title"] == "cilia agent API"


def test_monitor_prints_raw_events_and_status_counts_lost(lab: Lab) -> None:
    assert lab.probe("client", "web", 80)["verdict"] == "connected"
    events = [json.loads(line) for line in cilia("monitor", "--last", "50", "--no-follow").stdout.splitlines()]
    assert events, "no raw events"
    syn = [e for e in events
           if e["type"] == "trace" and e["packet"]["l4"] and e["packet"]["l4"]["tcp_flags"] == ["SYN"]]
    assert syn and syn[-1]["observation_point"] == "TO_ENDPOINT" and syn[-1]["ct_status"] == "new"
    assert cilia_json("status")["events_lost"] == 0
