"""The lab's cilia-relay (`relay: true` in the topology): where it runs and how it is started.

It runs in a namespace of its own, `cilia-relay`, with only loopback: it reads the nodes'
Observers on their unix sockets (/run/cilia/<node>/hubble.sock; a socket is a file, so no network
is needed), serves its own Observer on /run/cilia/relay/hubble.sock (the test process and
`hubble --server unix://...` reach it from anywhere), and its /metrics and service map page on
loopback addresses inside the namespace (a browser run in that namespace opens the page). In a
cluster lab it finds the nodes in etcd's node registry (over the members' unix sockets), in a
lab without etcd it is given every node with --peer."""

from __future__ import annotations

from pathlib import Path

from cilia.lab.process import PYTHON, sh
from cilia.paths import RUN_ROOT

NETNS = "cilia-relay"
RUN_DIR = RUN_ROOT / "relay"
SOCKET = RUN_DIR / "hubble.sock"
UI_ADDRESS = "127.0.0.1:12000"
METRICS_ADDRESS = "127.0.0.1:9966"
NODE_SOCKET_TEMPLATE = str(RUN_ROOT / "{name}" / "hubble.sock")


def create_netns() -> None:
    sh("ip", "netns", "add", NETNS)
    sh("ip", "-n", NETNS, "link", "set", "lo", "up")


def relay_args(nodes: list[str], etcd_unix_endpoints: list[str] | None) -> list[str]:
    """cilia-relay's command line for the lab's nodes (or its etcd's node registry)."""
    args = [str(Path(PYTHON).with_name("cilia-relay")), "--listen-address", f"unix://{SOCKET}",
            "--ui-listen-address", UI_ADDRESS, "--metrics-listen-address", METRICS_ADDRESS]
    if etcd_unix_endpoints:
        return [*args, "--kvstore-endpoints", ",".join(etcd_unix_endpoints),
                "--peer-address-template", f"unix://{NODE_SOCKET_TEMPLATE}"]
    return [*args, *(f"--peer={name}=unix://{NODE_SOCKET_TEMPLATE.format(name=name)}" for name in nodes)]
