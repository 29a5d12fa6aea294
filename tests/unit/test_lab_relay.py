"""The lab's relay: `relay:` in the topology, and the command line the lab starts cilia-relay with."""

from __future__ import annotations

import pytest

from cilia.lab import relay as lab_relay
from cilia.lab.topology import TopologyError, parse_topology
from cilia.paths import RUN_ROOT
from cilia.relay.main import build_parser


def test_relay_in_the_topology() -> None:
    assert parse_topology({"relay": True}).relay is True
    assert parse_topology({}).relay is False
    with pytest.raises(TopologyError, match="relay: must be true or false"):
        parse_topology({"relay": "yes"}, "lab.yaml")


def test_relay_args_for_static_nodes_and_for_the_registry() -> None:
    static = lab_relay.relay_args(["n1", "n2"], None)
    args = build_parser().parse_args(static[1:])
    assert args.peer == [f"n1=unix://{RUN_ROOT}/n1/hubble.sock", f"n2=unix://{RUN_ROOT}/n2/hubble.sock"]
    assert args.listen_address == f"unix://{lab_relay.SOCKET}" and args.kvstore_endpoints is None
    assert (args.ui_listen_address, args.metrics_listen_address) == (lab_relay.UI_ADDRESS, lab_relay.METRICS_ADDRESS)
    registry = build_parser().parse_args(lab_relay.relay_args(["n1"], ["unix:/run/cilia/etcd/m/etcd.sock:2379"])[1:])
    assert registry.peer == [] and registry.kvstore_endpoints == "unix:/run/cilia/etcd/m/etcd.sock:2379"
    assert registry.peer_address_template == f"unix://{RUN_ROOT}/{{name}}/hubble.sock"
