"""The CNI call path for real: ADD/DEL cycles leak nothing; a failed ADD leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from cilia.api.client import AgentClient
from cilia.lab.lab import Lab
from cilia.lab.process import sh
from cilia.paths import NodePaths

PLUGIN = os.path.join(os.path.dirname(sys.executable), "cilia-cni")
NETNS = "cilia-pod-cni-cycles"


def cni(command: str, container_id: str, netns: str, args: str = "", version: str = "1.0.0",
        conf_extra: dict[str, Any] | None = None) -> tuple[int, Any]:
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": "eth0",
           "CNI_NETNS": netns, "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": args}
    conf = {"cniVersion": version, "name": "cilia", "type": "cilia-cni", "agentSocket": str(NodePaths("n1").socket),
            **(conf_extra or {})}
    result = subprocess.run([PLUGIN], input=json.dumps(conf), env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None


def node_links(lab: Lab) -> set[str]:
    out = lab.exec("n1", ["ip", "-o", "link", "show"]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def snapshot(lab: Lab) -> tuple[set[str], int, int, int]:
    with AgentClient(NodePaths("n1").socket) as client:
        endpoints = len(client.list_endpoints())
        bpf_endpoints = len(client.get("/v1/bpf/endpoints"))
        identities = len(client.list_identities())
    return node_links(lab), endpoints, bpf_endpoints, identities


@pytest.fixture
def netns(lab: Lab) -> Any:
    sh("ip", "netns", "add", NETNS)
    try:
        yield f"/run/netns/{NETNS}"
    finally:
        sh("ip", "netns", "del", NETNS, check=False)


@pytest.mark.timeout(900)  # 100 real ADD+DEL cycles: about 150 s here
def test_add_check_del_cycles_leak_nothing(lab: Lab, netns: str) -> None:
    before = snapshot(lab)
    for cycle in range(100):
        code, result = cni("ADD", f"cilia-cycle-{cycle}", netns, "IgnoreUnknown=1;K8S_POD_NAME=cycler")
        assert code == 0, result
        assert result["interfaces"][0]["mac"] and result["ips"][0]["address"].startswith("10.200.1.")
        if cycle % 25 == 0:
            prev = {**result}
            code, check = cni("CHECK", f"cilia-cycle-{cycle}", netns)
            assert code == 0, (check, prev)
        code, result = cni("DEL", f"cilia-cycle-{cycle}", netns)
        assert code == 0, result
    assert snapshot(lab) == before
    code, _ = cni("DEL", "cilia-cycle-0", "")  # DEL again, with an empty netns as containerd sends it
    assert code == 0


# The CNI spec's codes: 4 invalid environment (CNI_ARGS is one), 5 I/O error, 7 invalid network config.
@pytest.mark.parametrize(
    ("args", "conf_extra", "netns_path", "expected_code", "message"),
    [
        ("IP=10.99.0.5", None, None, 4, "CNI_ARGS: ipv4: 10.99.0.5 is outside"),  # requested IP outside the CIDR
        ("IP=10.200.1.1", None, None, 4, "reserved"),  # the router's address
        ("IP=10.200.1.300", None, None, 4, "CNI_ARGS: IP"),  # not an address: refused by the plugin itself
        ("", {"runtimeConfig": {"ips": ["10.99.0.5/24"]}}, None, 7, "network config: ipv4: 10.99.0.5 is outside"),
        ("", None, "/run/netns/cilia-does-not-exist", 5, "does not exist"),  # netns vanished mid-ADD
    ],
)
def test_failed_add_leaves_nothing(lab: Lab, netns: str, args: str, conf_extra: dict[str, Any] | None,
                                   netns_path: str | None, expected_code: int, message: str) -> None:
    before = snapshot(lab)
    code, error = cni("ADD", "cilia-failing", netns_path or netns, args, conf_extra=conf_extra)
    assert code == 1 and error["code"] == expected_code and message in error["msg"], error
    assert snapshot(lab) == before
    assert lab.exec("n1", ["ip", "-o", "link"]).stdout.count("tmp") == 0
