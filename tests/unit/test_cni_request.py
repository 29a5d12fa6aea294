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


# --- error codes: the CNI spec's numbers, one definition (cilia.cni.spec), the right one per failure ---

ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x"}


def test_agent_uses_the_spec_error_codes() -> None:
    """The numbers from the CNI spec's error table (SPEC.md "Error"), not from our own constants."""
    from cilia.api import errors
    from cilia.cni import spec

    assert (spec.INCOMPATIBLE_VERSION, spec.UNSUPPORTED_FIELD, spec.UNKNOWN_CONTAINER, spec.INVALID_ENV,
            spec.IO_ERROR, spec.DECODE_ERROR, spec.INVALID_NETWORK_CONFIG, spec.TRY_AGAIN_LATER,
            spec.PLUGIN_NOT_AVAILABLE, spec.LIMITED_CONNECTIVITY) == (1, 2, 3, 4, 5, 6, 7, 11, 50, 51)
    assert errors.CNI_UNKNOWN_CONTAINER == 3
    assert errors.CNI_INVALID_ENV == 4
    assert errors.CNI_INVALID_NETWORK_CONFIG == 7
    assert errors.CNI_TRY_AGAIN_LATER == 11


def test_refused_address_code_follows_where_the_runtime_put_it() -> None:
    """The agent refuses a requested address with INVALID_ENV; the runtime must read 4 (invalid
    environment) for CNI_ARGS IP= and 7 (invalid network config) for runtimeConfig.ips."""
    from cilia.api.errors import CILIA_DATAPATH, CILIA_INVALID_OBJECT, CNI_INVALID_ENV, CNI_UNKNOWN_CONTAINER
    from cilia.cni.main import agent_error

    refused = "ipv4: 10.99.0.5 is outside the node's pod CIDR 10.200.1.0/24"
    by_args = parse_request(ADD_ENV | {"CNI_ARGS": "IP=10.99.0.5"}, CONF)
    error = agent_error(by_args, 400, CNI_INVALID_ENV, refused)
    assert (error.code, error.msg) == (4, f"CNI_ARGS: {refused}")
    by_conf = parse_request(ADD_ENV, json.dumps(json.loads(CONF) | {"runtimeConfig": {"ips": ["10.99.0.5/24"]}}))
    error = agent_error(by_conf, 400, CNI_INVALID_ENV, refused)
    assert (error.code, error.msg) == (7, f"network config: {refused}")
    assert agent_error(by_args, 404, CNI_UNKNOWN_CONTAINER, "gone").code == 3
    assert agent_error(by_args, 500, CILIA_DATAPATH, "load failed").code == 5  # I/O error on the node
    assert agent_error(by_args, 400, CILIA_INVALID_OBJECT, "refused").code == 7


@pytest.mark.parametrize(
    ("env", "conf", "code", "message"),
    [
        ({"CNI_ARGS": "IP=10.0.0.300"}, {}, 4, "CNI_ARGS: IP: '10.0.0.300' is not an IP address"),
        ({"CNI_ARGS": "MAC=zz"}, {}, 4, "CNI_ARGS: MAC 'zz'"),
        ({"CNI_IFNAME": "a-very-long-ifname"}, {}, 4, "CNI_IFNAME"),
        ({"CNI_CONTAINERID": "../etc"}, {}, 4, "CNI_CONTAINERID"),
        ({}, {"runtimeConfig": {"ips": "10.0.0.9"}}, 7, '"runtimeConfig.ips"'),
        ({}, {"runtimeConfig": {"ips": [5]}}, 7, '"runtimeConfig.ips[0]"'),
        ({}, {"runtimeConfig": {"mac": 5}}, 7, '"runtimeConfig.mac"'),
        ({}, {"runtimeConfig": []}, 7, '"runtimeConfig"'),
        ({}, {"args": {"cni": []}}, 7, '"args.cni"'),
        ({}, {"args": {"cni": {"ips": ["x"]}}}, 7, '"args.cni.ips[0]"'),
        ({}, {"agentSocket": "/run/\0x"}, 7, '"agentSocket"'),
        ({}, {"logFile": "/tmp/\0x"}, 7, '"logFile"'),
    ],
)
def test_add_parameters_are_checked_with_the_right_code(env: dict[str, str], conf: dict[str, object], code: int,
                                                        message: str) -> None:
    with pytest.raises(CniError) as info:
        parse_request(ADD_ENV | env, json.dumps(json.loads(CONF) | conf))
    assert (info.value.code, message in info.value.msg) == (code, True), info.value.msg


def test_check_and_gc_read_their_lists_with_the_right_code() -> None:
    check = {**ADD_ENV, "CNI_COMMAND": "CHECK"}
    with pytest.raises(CniError, match=r'"prevResult.ips"') as info:
        parse_request(check, json.dumps(json.loads(CONF) | {"prevResult": {"ips": 5}}))
    assert info.value.code == 7
    gc = {"CNI_COMMAND": "GC"}
    with pytest.raises(CniError, match="valid-attachments") as info:
        parse_request(gc, json.dumps(json.loads(CONF) | {"cni.dev/valid-attachments": [{"ifname": "eth0"}]}))
    assert info.value.code == 7


def test_executable_answers_json_when_its_log_file_cannot_be_opened() -> None:
    exe = os.path.join(os.path.dirname(sys.executable), "cilia-cni")
    conf = {"cniVersion": "1.0.0", "name": "cilia", "agentSocket": "/nonexistent/cilia.sock",
            "logFile": "/nonexistent/dir/cilia-cni.log"}
    out = subprocess.run([exe], env={**os.environ, "CNI_COMMAND": "STATUS"}, input=json.dumps(conf),
                         capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 1 and json.loads(out.stdout)["code"] == 50, (out.stdout, out.stderr)
    assert "cannot log to /nonexistent/dir/cilia-cni.log" in out.stderr
