"""Where a cilia node keeps its socket, state, bpffs pins and cgroup subtree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RUN_ROOT = Path(os.environ.get("CILIA_RUN_ROOT", "/run/cilia"))
STATE_ROOT = Path(os.environ.get("CILIA_STATE_ROOT", "/var/lib/cilia"))
BPFFS_MOUNT = Path("/sys/fs/bpf")
BPFFS_ROOT = BPFFS_MOUNT / "cilia"


def cgroup2_mount() -> Path:
    """The cgroup v2 mount point, read from /proc/mounts (it is not always /sys/fs/cgroup)."""
    with open("/proc/mounts", encoding="ascii") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return Path(fields[1])
    raise FileNotFoundError("no cgroup2 filesystem is mounted (looked in /proc/mounts)")


@dataclass(frozen=True)
class NodePaths:
    """Every per-node location; all names carry the node name so nodes never share state."""

    node: str

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.node

    @property
    def socket(self) -> Path:
        return self.run_dir / "agent.sock"

    @property
    def hubble_socket(self) -> Path:
        """Hubble's Observer API (gRPC): `hubble observe --server unix://<this path>`."""
        return self.run_dir / "hubble.sock"

    @property
    def proxy_policy_dir(self) -> Path:
        """The L7 proxy's rules, one `<endpoint id>.json` per endpoint with L7 rules (cilia.proxy.policy)."""
        return self.run_dir / "proxy" / "policy"

    @property
    def dns_policy_dir(self) -> Path:
        """The DNS proxy's rules, one `<endpoint id>.json` per endpoint with DNS rules (cilia.proxy.dnspolicy)."""
        return self.run_dir / "proxy" / "dns"

    @property
    def fqdn_cache_file(self) -> Path:
        """The DNS proxy's name cache (cilia.fqdn.cache), persisted so it survives restarts."""
        return self.state_dir / "fqdn-cache.json"

    @property
    def fqdn_clean_request(self) -> Path:
        """Touched by `cilia fqdn cache clean` (through the agent); the DNS proxy empties its cache."""
        return self.run_dir / "proxy" / "fqdn-clean"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "agent.pid"

    @property
    def proxy_supervisor_pid_file(self) -> Path:
        """cilia-proxy's supervisor (`proxy.pid` is its active worker's): how a lab's teardown finds a
        proxy whatever its state file says."""
        return self.run_dir / "proxy-supervisor.pid"

    @property
    def accesslog_socket(self) -> Path:
        """The agent's end of the proxies' access log (unix datagrams, cilia.proxy.accesslog)."""
        return self.run_dir / "accesslog.sock"

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.node

    @property
    def bpffs_dir(self) -> Path:
        return BPFFS_ROOT / self.node

    def cgroup_dir(self) -> Path:
        return cgroup2_mount() / "cilia" / self.node


def default_node_name() -> str:
    """The node this process talks to: $CILIA_NODE, else the only node with a socket, else 'default'."""
    env = os.environ.get("CILIA_NODE")
    if env:
        return env
    if RUN_ROOT.is_dir():
        nodes = sorted(p.parent.name for p in RUN_ROOT.glob("*/agent.sock"))
        if len(nodes) == 1:
            return nodes[0]
    return "default"
