"""Mutation fuzz of the lab topology loader (`cilia lab up -f` parses user YAML): only
TopologyError, naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from mutation import FUZZ, crashes_of_single_edits, mutated

from cilia.lab.topology import FIELDS, TopologyError, parse_topology

ROOT = Path(__file__).resolve().parents[2]
SEEDS = [yaml.safe_load((ROOT / "examples/lab-basic.yaml").read_text()),
         {"nodes": [{"name": "n1"}, {"name": "n2", "podCIDRv4": "10.200.2.0/24", "podCIDRv6": "fd00:200:2::/64"}],
          "namespaces": [{"name": "x", "labels": {"team": "x"}}],
          "pods": [{"name": "a", "namespace": "x", "node": "n2", "ip": "10.200.2.9", "socketLB": False,
                    "labels": {"app": "a"}, "ports": [{"port": 80, "protocol": "http", "name": "web"}]}],
          "externals": [{"name": "w", "ports": [{"port": 53, "protocol": "udp"}]}]},
         yaml.safe_load((ROOT / "examples/lab-cluster.yaml").read_text())]
SOURCE = "lab.yaml"


def check(data: Any) -> None:
    try:
        parse_topology(data, SOURCE)
    except TopologyError as exc:
        message = str(exc)
        assert message.startswith(f"{SOURCE}: "), message
        if isinstance(data, dict) and not set(data) - set(FIELDS):
            assert any(f in message for f in FIELDS), message


@FUZZ
@given(mutated(SEEDS))
def test_topology_fails_only_with_topology_error(data: Any) -> None:
    check(data)


def test_topology_every_single_edit() -> None:
    assert crashes_of_single_edits(SEEDS, check) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # crashes the fuzz found, before the fix
        ({"nodes": [{"name": "n1", "podCIDRv4": 5}]}, "lab.yaml: nodes[0].podCIDRv4"),
        ({"nodes": 5}, "lab.yaml: nodes: must be a list"),
        ({"namespaces": [{"name": "x", "labels": ["a"]}]}, "lab.yaml: namespaces[0].labels"),
        ({"pods": [{"name": "a", "namespace": ["x"]}]}, "lab.yaml: pods[0].namespace"),
        ({"pods": [{"name": "a", "ports": [{"port": True}]}]}, "lab.yaml: pods[0].ports[0].port"),
    ],
)
def test_found_crashes_are_topology_errors(data: Any, message: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(data, SOURCE)
    assert message in str(info.value)
