"""Mutation fuzz of what a runtime hands the CNI plugin (cni/request.py: CNI_* environment and
the network config on stdin): only CniError, whose message names the variable or the field. Any
other exception would reach the runtime as a Python traceback instead of the spec's error JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mutation import FUZZ, crashes_of_single_edits, mutated

from cilia.cni.request import parse_request, requested_ips, requested_mac
from cilia.cni.spec import CniError

CONFIGS = [
    {"cniVersion": "1.0.0", "name": "cilia", "type": "cilia-cni", "agentSocket": "/run/cilia/n1/agent.sock",
     "mtu": 1500, "logFile": "/tmp/cilia-cni.log",
     "runtimeConfig": {"ips": ["10.200.1.9/24", "fd00:200:1::9"], "mac": "02:00:00:00:00:09"},
     "args": {"cni": {"ips": ["10.200.1.10"]}},
     "prevResult": {"ips": [{"address": "10.200.1.9/32", "interface": 0}],
                    "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:09", "sandbox": "/run/netns/x"}]},
     "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}, {"containerID": "c2"}]},
    {"cniVersion": "0.3.1", "name": "cilia", "type": "cilia-cni"},
]
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;"
                                               "IP=10.200.1.9;MAC=02:00:00:00:00:09"}
NAMES = ("network config", "CNI_", "environment variable")
env_values = st.one_of(st.sampled_from(["", "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "eth0", "x" * 16, "a/b",
                                        "IP=10.0.0.1", "IP=x", "MAC=zz", "IP=10.0.0.1,fd00::1;MAC=02:aa:bb:cc:dd:ee",
                                        "K8S_POD_NAME", "=;=", "IgnoreUnknown=true;FOO=1"]),
                       st.text(max_size=20))


@st.composite
def requests(draw: Any) -> tuple[dict[str, str], str]:
    env = dict(ENV)
    env["CNI_COMMAND"] = draw(st.sampled_from(["ADD", "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "BAD"]))
    for key in draw(st.lists(st.sampled_from(sorted(ENV)), max_size=2)):
        if draw(st.booleans()):
            env.pop(key, None)
        else:
            env[key] = draw(env_values)
    conf = draw(mutated(CONFIGS))
    stdin = json.dumps(conf) if draw(st.integers(0, 9)) else draw(st.text(max_size=30))
    return env, stdin


def check(env: dict[str, str], stdin: str) -> None:
    try:
        parsed = parse_request(env, stdin)
        requested_ips(parsed)  # what ADD sends the agent: read without surprises once parsed
        requested_mac(parsed)
    except CniError as exc:
        assert any(name in exc.msg for name in NAMES), exc.msg
        assert 1 <= exc.code < 100, exc.code
        json.loads(exc.to_json("1.0.0"))


@FUZZ
@given(requests())
def test_cni_request_fails_only_with_cni_error(request: tuple[dict[str, str], str]) -> None:
    check(*request)


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "GC", "STATUS"])
def test_cni_config_every_single_edit(command: str) -> None:
    env = ENV | {"CNI_COMMAND": command}
    assert crashes_of_single_edits(CONFIGS, lambda conf: check(env, json.dumps(conf))) == []
