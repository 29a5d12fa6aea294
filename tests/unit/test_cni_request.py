"""CNI plugin: parsing env/config/args, result rendering, spec errors, the real executable's VERSION."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cilia.cni.request import parse_cni_args, parse_netconf, parse_request, requested_ips
from cilia.cni.result import render_result
from cilia.cni.spec import CniError

CONF = json.dumps({"cniVersion": "1.0.0", "name": "cilia", "type": "cilia-cni", "agentSocket": "/run/x.sock"})


def test_cni_args_ignore_unknown() -> None:
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;FOO=bar")["K8S_POD_NAME"] == "web"
    with pytest.raises(CniError, match="FOO"):
        parse_cni_args("K8S_POD_NAME=web;FOO=bar")
    with pytest.raises(CniError, match="KEY=VALUE"):
        parse_cni_args("novalue")


@pytest.mark.parametrize(
    ("conf", "code", "message"),
    [
        ("{not json", 6, "malformed JSON"),
        ('{"name": "x"}', 7, "cniVersion"),
        ('{"cniVersion": "9.9.9", "name": "x"}', 1, "not supported"),
        ('{"cniVersion": "1.0.0", "name": "x", "mtu": 10}', 7, '"mtu"'),
        ('{"cniVersion": "1.0.0", "name": "x", "agentSocket": "rel"}', 7, "agentSocket"),
    ],
)
def test_bad_config_errors(conf: str, code: int, message: str) -> None:
    with pytest.raises(CniError, match=message) as info:
        parse_netconf(conf)
    assert info.value.code == code


def test_request_requires_env_and_reads_ips() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    with pytest.raises(CniError, match="CNI_NETNS"):
        parse_request(env, CONF)
    conf = json.loads(CONF) | {"runtimeConfig": {"IPs": ["10.0.0.9/24"]}}
    request = parse_request(env | {"CNI_NETNS": "/run/netns/x", "CNI_ARGS": "IP=fd00::9"}, json.dumps(conf))
    assert requested_ips(request) == ["fd00::9", "10.0.0.9"]
    delete = parse_request({**env, "CNI_COMMAND": "DEL"}, CONF)  # DEL accepts an empty CNI_NETNS
    assert delete.netns == ""


def test_result_versions() -> None:
    common = {"ifname": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x", "ipv4": "10.0.0.2",
              "ipv6": "fd00::2", "gateway_ipv4": "10.0.0.1", "gateway_ipv6": "fd00::1"}
    v1 = render_result("1.0.0", **common)
    assert v1["interfaces"] == [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/x"}]
    assert v1["ips"][0] == {"address": "10.0.0.2/32", "interface": 0, "gateway": "10.0.0.1"}
    assert {"dst": "::/0", "gw": "fd00::1"} in v1["routes"]
    assert render_result("0.3.1", **common)["ips"][1]["version"] == "6"


def test_executable_version_and_error_json() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "cilia-cni")
    out = subprocess.run([exe], env={**os.environ, "CNI_COMMAND": "VERSION"}, capture_output=True, text=True,
                         check=True)
    assert "1.0.0" in json.loads(out.stdout)["supportedVersions"]
    bad = subprocess.run([exe], env={**os.environ, "CNI_COMMAND": "ADD"}, input="{", capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 6
