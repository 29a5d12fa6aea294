"""The cluster in a box: fabric, nodes with their agents, pods attached by the real CNI plugin.

Everything lives in network namespaces named cilia-*; the root namespace is never touched.
Processes are started detached and stopped by the pid recorded in the state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cilia.lab.topology import ExternalSpec, NodeSpec, PodSpec, Topology
from cilia.paths import BPFFS_ROOT, RUN_ROOT, STATE_ROOT, NodePaths, cgroup2_mount

LAB_DIR = RUN_ROOT / "lab"
STATE_FILE = LAB_DIR / "state.json"
FABRIC = "cilia-fabric"
BRIDGE = "cilia-br0"
PYTHON = sys.executable
# LoadBalancer and externalIP addresses in the lab: routed on the fabric to the first node.
SERVICE_ROUTES = ("203.0.113.0/24", "2001:db8:203::/64")


def cgroup_root() -> Path:
    """The lab's cgroup subtree: <cgroup2>/cilia. Socket LB hooks attach to <root>/<node> only."""
    return cgroup2_mount() / "cilia"


def _join_cgroup(cgroup: Path | None) -> Any:
    """A preexec_fn that moves the child into `cgroup` before it runs the command."""
    if cgroup is None:
        return None
    procs = str(cgroup / "cgroup.procs")

    def join() -> None:
        with open(procs, "w", encoding="ascii") as handle:
            handle.write(str(os.getpid()))

    return join


class LabError(Exception):
    pass


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def in_netns(netns: str, *args: str) -> list[str]:
    """nsenter --net only: `ip netns exec` would remount /sys and hide /sys/fs/bpf."""
    return ["nsenter", f"--net=/run/netns/{netns}", *args]


def _spawn(netns: str, args: list[str], log: Path, cgroup: Path | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            in_netns(netns, *args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_join_cgroup(cgroup),
        )
    return process.pid


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after a bounded wait. By pid only, never by name."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


class Lab:
    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state: dict[str, Any] = state or {"nodes": {}, "pods": {}, "externals": {}, "pids": []}

    @classmethod
    def load(cls) -> Lab:
        if not STATE_FILE.exists():
            raise LabError("no lab is up (no state file): run `cilia lab up -f TOPOLOGY`")
        return cls(json.loads(STATE_FILE.read_text()))

    def save(self) -> None:
        LAB_DIR.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(json.dumps(self.state, indent=1))

    # ----- up --------------------------------------------------------------------------------------
    @classmethod
    def up(cls, topology: Topology, *, agent_args: list[str] | None = None) -> Lab:
        if STATE_FILE.exists():
            raise LabError("a lab is already up: run `cilia lab down` first")
        lab = cls()
        try:
            lab._fabric()
            for node in topology.nodes:
                lab._node(node, agent_args or [])
            for external in topology.externals:
                lab._external(external)
            for node in topology.nodes:
                lab._wait_agent(node.name)
            lab._apply_namespaces(topology)
            for pod in topology.pods:
                lab.add_pod(pod)
        except BaseException:
            lab.down()
            raise
        return lab

    def _fabric(self) -> None:
        sh("ip", "netns", "add", FABRIC)
        self.state["fabric"] = FABRIC
        self.save()
        f = ["ip", "-n", FABRIC]
        sh(*f, "link", "add", BRIDGE, "type", "bridge")
        for address in ("192.0.2.1/24", "198.51.100.1/24", "fd00:c1a::1/64", "2001:db8:100::1/64"):
            sh(*f, "addr", "add", address, "dev", BRIDGE, *(["nodad"] if ":" in address else []))
        sh(*f, "link", "set", BRIDGE, "up")
        sh(*f, "link", "set", "lo", "up")
        sh(*in_netns(FABRIC, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"))

    def _attach_to_fabric(self, netns: str, fabric_side: str, addresses: tuple[str, str],
                          gateways: tuple[str, str]) -> None:
        """A host (node or external) with eth0 on the fabric bridge, its addresses and default routes."""
        sh("ip", "netns", "add", netns)
        sh("ip", "-n", FABRIC, "link", "add", fabric_side, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "-n", FABRIC, "link", "set", fabric_side, "master", BRIDGE, "up")
        n = ["ip", "-n", netns]
        sh(*n, "link", "set", "lo", "up")
        sh(*n, "link", "set", "eth0", "up")
        sh(*n, "addr", "add", f"{addresses[0]}/24", "dev", "eth0")
        sh(*n, "addr", "add", f"{addresses[1]}/64", "dev", "eth0", "nodad")
        sh(*n, "route", "add", "default", "via", gateways[0])
        sh(*n, "-6", "route", "add", "default", "via", gateways[1])

    def _node(self, node: NodeSpec, agent_args: list[str]) -> None:
        self.state["nodes"][node.name] = {
            "name": node.name, "netns": node.netns, "ipv4": str(node.underlay_ipv4), "ipv6": str(node.underlay_ipv6),
            "ipv4_pod_cidr": str(node.ipv4_pod_cidr), "ipv6_pod_cidr": str(node.ipv6_pod_cidr),
        }
        self.save()
        self._attach_to_fabric(node.netns, f"cilia-{node.name}", (str(node.underlay_ipv4), str(node.underlay_ipv6)),
                               ("192.0.2.1", "fd00:c1a::1"))
        # Native routing on the fabric: external hosts reach pods directly (ipBlock / fromCIDR ingress).
        for cidr, via in ((node.ipv4_pod_cidr, node.underlay_ipv4), (node.ipv6_pod_cidr, node.underlay_ipv6)):
            if cidr is not None:
                sh("ip", "-n", FABRIC, "route", "replace", str(cidr), "via", str(via))
        if node.index == 1:  # LoadBalancer / externalIP addresses reach the first node
            for route, gateway in zip(SERVICE_ROUTES, (node.underlay_ipv4, node.underlay_ipv6), strict=True):
                sh("ip", "-n", FABRIC, "route", "replace", route, "via", str(gateway))
        # The node's cgroup: its pods' processes (and `lab exec` on the node) run below it, and the
        # agent attaches the socket load-balancing hooks to it.
        cgroup = cgroup_root() / node.name
        (cgroup / "host").mkdir(parents=True, exist_ok=True)
        self.state["nodes"][node.name]["cgroup"] = str(cgroup)
        self.save()
        self._start_agent(node.name, agent_args)

    def restart_agent(self, node_name: str, *, kill: bool = True, agent_args: list[str] | None = None) -> int:
        """kill -9 (or SIGTERM) the node's agent and start a new one; returns the new pid."""
        node = self.state["nodes"][node_name]
        old = int(node["agent_pid"])
        if kill:
            try:
                os.kill(old, signal.SIGKILL)
                os.waitpid(old, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        else:
            stop_pid(old)
        pid = self._start_agent(node_name, agent_args or [])
        self._wait_agent(node_name)
        return pid

    def _start_agent(self, node_name: str, agent_args: list[str]) -> int:
        """The node's agent inside the node's netns, detached, its pid recorded in the lab state."""
        node = self.state["nodes"][node_name]
        pid = _spawn(node["netns"], [
            str(Path(PYTHON).with_name("cilia-agent")), "--node", node_name,
            "--ipv4-pod-cidr", node["ipv4_pod_cidr"], "--ipv6-pod-cidr", node["ipv6_pod_cidr"],
            "--underlay-device", "eth0", "--cgroup-root", node["cgroup"], *agent_args,
        ], NodePaths(node_name).run_dir / "agent.log")
        node["agent_pid"] = pid
        self.save()
        return pid

    def _wait_agent(self, node_name: str, timeout: float = 30) -> None:
        from cilia.api.client import AgentClient, AgentError, AgentUnavailable

        socket = NodePaths(node_name).socket
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            pid = int(self.state["nodes"][node_name]["agent_pid"])
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                log = (NodePaths(node_name).run_dir / "agent.log").read_text()[-3000:]
                raise LabError(f"agent of node {node_name} exited during start-up:\n{log}")
            try:
                with AgentClient(socket, timeout=2) as client:
                    client.healthz()
                    return
            except (AgentUnavailable, AgentError) as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise LabError(f"agent of node {node_name} not ready within {timeout:.0f} s: {last_error}")

    def _external(self, external: ExternalSpec) -> None:
        self.state["externals"][external.name] = {"netns": external.netns, "ipv4": str(external.ipv4),
                                                  "ipv6": str(external.ipv6)}
        self.save()
        self._attach_to_fabric(external.netns, f"cilia-x{external.index}", (str(external.ipv4), str(external.ipv6)),
                               ("198.51.100.1", "2001:db8:100::1"))
        self._start_servers(external.netns, external.name, external.ports)

    def _start_servers(self, netns: str, name: str, ports: tuple[Any, ...], cgroup: Path | None = None) -> None:
        if not ports:
            return
        args = [PYTHON, "-m", "cilia.lab.server", "--name", name]
        for port in ports:
            args += [f"--{port.protocol}", str(port.port)]
        pid = _spawn(netns, args, LAB_DIR / f"server-{netns}.log", cgroup)
        self.state["pids"].append(pid)
        self.save()
        self._wait_listening(netns, {p.port for p in ports})

    @staticmethod
    def _wait_listening(netns: str, ports: set[int], timeout: float = 15) -> None:
        """Tests and probes start right after `up`: return only once every port is bound."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = sh(*in_netns(netns, "ss", "-H", "-ltun"), check=False).stdout
            bound = {int(line.split()[4].rsplit(":", 1)[1]) for line in out.splitlines() if len(line.split()) > 4}
            if ports <= bound:
                return
            time.sleep(0.05)
        raise LabError(f"servers in {netns} did not bind ports {sorted(ports)} within {timeout:.0f} s")

    def _apply_namespaces(self, topology: Topology) -> None:
        from cilia.api.client import AgentClient
        from cilia.api.models import ApplyRequest

        objects = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
                   for name, labels in topology.namespaces.items()]
        for node in topology.nodes:
            with AgentClient(NodePaths(node.name).socket) as client:
                client.apply(ApplyRequest(objects=objects))

    def add_pod(self, pod: PodSpec) -> dict[str, Any]:
        from cilia.api.client import AgentClient
        from cilia.api.models import ApplyRequest

        socket = NodePaths(pod.node).socket
        pod_object = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
            "spec": {"containers": [{"name": "main", "ports": [
                {"containerPort": p.port, "protocol": "UDP" if p.protocol == "udp" else "TCP",
                 **({"name": p.name} if p.name else {})} for p in pod.ports]}]},
        }
        with AgentClient(socket) as client:
            client.apply(ApplyRequest(objects=[pod_object]))
        sh("ip", "netns", "add", pod.netns)
        entry: dict[str, Any] = {"name": pod.name, "namespace": pod.namespace, "node": pod.node,
                                 "netns": pod.netns, "container_id": pod.container_id, "cgroup": None}
        if pod.socket_lb:
            cgroup = Path(self.state["nodes"][pod.node]["cgroup"]) / pod.netns
            cgroup.mkdir(exist_ok=True)
            entry["cgroup"] = str(cgroup)
        self.state["pods"][f"{pod.namespace}/{pod.name}"] = entry
        self.save()
        result = self.cni("ADD", pod)
        ips = [ip["address"].split("/")[0] for ip in result.get("ips", [])]
        entry["ipv4"] = next((ip for ip in ips if ":" not in ip), None)
        entry["ipv6"] = next((ip for ip in ips if ":" in ip), None)
        entry["mac"] = result["interfaces"][0]["mac"]
        self.save()
        self._start_servers(pod.netns, pod.name, pod.ports, Path(entry["cgroup"]) if entry["cgroup"] else None)
        return entry

    def cni(self, command: str, pod: PodSpec | dict[str, Any]) -> dict[str, Any]:
        if isinstance(pod, PodSpec):
            node, netns, container_id = pod.node, pod.netns, pod.container_id
            namespace, name, ip = pod.namespace, pod.name, pod.ip
        else:
            node, netns, container_id = pod["node"], pod["netns"], pod["container_id"]
            namespace, name, ip = pod["namespace"], pod["name"], None
        cni_args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}" + (f";IP={ip}" if ip else "")
        env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": f"/run/netns/{netns}", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
               "CNI_ARGS": cni_args}
        conf = {"cniVersion": "1.0.0", "name": "cilia", "type": "cilia-cni",
                "agentSocket": str(NodePaths(node).socket)}
        plugin = str(Path(PYTHON).with_name("cilia-cni"))
        result = subprocess.run([plugin], input=json.dumps(conf), env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        output: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
        if result.returncode != 0:
            raise LabError(f"CNI {command} for pod {namespace}/{name} failed: {output or result.stderr.strip()}")
        return output

    # ----- use -------------------------------------------------------------------------------------
    def netns_of(self, name: str) -> str:
        for key, pod in self.state["pods"].items():
            if name in (key, pod["name"]):
                return str(pod["netns"])
        for table in ("nodes", "externals"):
            if name in self.state[table]:
                return str(self.state[table][name]["netns"])
        raise LabError(f"no pod, node or external host named {name!r} in the lab")

    def address_of(self, name: str, ipv6: bool = False) -> str:
        for key, pod in self.state["pods"].items():
            if name in (key, pod["name"]):
                return str(pod["ipv6" if ipv6 else "ipv4"])
        for table in ("nodes", "externals"):
            if name in self.state[table]:
                return str(self.state[table][name]["ipv6" if ipv6 else "ipv4"])
        return name  # already an address

    def cgroup_of(self, name: str) -> Path | None:
        """Where a command run 'in' this lab host belongs: its pod's cgroup, the node's host cgroup,
        or none (external hosts, and pods without socket LB, are outside every node's cgroup)."""
        for key, pod in self.state["pods"].items():
            if name in (key, pod["name"]):
                return Path(pod["cgroup"]) if pod.get("cgroup") else None
        if name in self.state["nodes"] and self.state["nodes"][name].get("cgroup"):
            return Path(self.state["nodes"][name]["cgroup"]) / "host"
        return None

    def popen(self, name: str, command: list[str]) -> subprocess.Popen[str]:
        """A long-running command in a lab host (its netns and cgroup), stdin/stdout as text pipes."""
        return subprocess.Popen(in_netns(self.netns_of(name), *command), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, preexec_fn=_join_cgroup(self.cgroup_of(name)))

    def exec(self, name: str, command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(in_netns(self.netns_of(name), *command), capture_output=True, text=True,
                              timeout=timeout, check=False, preexec_fn=_join_cgroup(self.cgroup_of(name)))

    def probe(self, source: str, target: str, port: int, protocol: str = "tcp", *, ipv6: bool = False,
              timeout: float = 3.0) -> dict[str, Any]:
        address = self.address_of(target, ipv6)
        result = self.exec(source, [PYTHON, "-m", "cilia.lab.probe", "--to", address, "--port", str(port),
                                    "--protocol", protocol, "--timeout", str(timeout)], timeout=timeout + 30)
        try:
            verdict: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            verdict = {"verdict": "error", "error": result.stderr.strip()}
        verdict["from"] = source
        return verdict

    def wait_ipv6_settled(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until no address in a node or the fabric is still in duplicate address detection.

        A pod's host-side veth gets its link-local address tentative for about a second after the pod
        is added; until then the node cannot resolve the pod's IPv6 neighbour entry, so the first packet
        routed by the node's stack (from an external host, say) waits out a neighbour retry and a probe
        with a short timeout reports it lost. Pod-to-pod traffic (redirect_peer) is not affected."""
        netns = [FABRIC, *(str(node["netns"]) for node in self.state["nodes"].values())]
        deadline = time.monotonic() + timeout
        while True:
            listing = {ns: sh(*in_netns(ns, "ip", "-6", "-o", "addr", "show", "tentative"), check=False).stdout
                       for ns in netns}
            tentative = [ns for ns, out in listing.items() if out.strip()]
            if not tentative:
                return
            if time.monotonic() >= deadline:
                raise LabError(f"IPv6 addresses still tentative after {timeout:.0f} s in {', '.join(tentative)}")
            time.sleep(0.05)

    def status(self) -> dict[str, Any]:
        return {"nodes": self.state["nodes"], "pods": list(self.state["pods"].values()),
                "externals": self.state["externals"]}

    # ----- down ------------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop processes, DEL pods through CNI while the agent still runs, remove namespaces."""
        for pod in list(self.state.get("pods", {}).values()):
            if "ipv4" in pod or "mac" in pod:
                try:
                    self.cni("DEL", pod)
                except Exception as exc:  # teardown goes on: leftovers are swept below
                    print(f"lab down: CNI DEL of {pod['namespace']}/{pod['name']} failed: {exc}", file=sys.stderr)
        for pid in self.state.get("pids", []):
            stop_pid(int(pid))
        for node in self.state.get("nodes", {}).values():
            if node.get("agent_pid"):
                stop_pid(int(node["agent_pid"]))
        cleanup_leftovers()


def cleanup_leftovers() -> None:
    """Remove everything a lab (also a crashed one) may have left: cilia-* namespaces, agents
    by their recorded pids, node state and run dirs, bpffs pins."""
    for pid_file in RUN_ROOT.glob("*/agent.pid") if RUN_ROOT.exists() else []:
        with contextlib.suppress(ValueError, OSError):
            stop_pid(int(pid_file.read_text().strip()))
    if STATE_FILE.exists():
        with contextlib.suppress(ValueError, OSError):
            state = json.loads(STATE_FILE.read_text())
            for pid in state.get("pids", []) + [n.get("agent_pid") for n in state.get("nodes", {}).values()]:
                if pid:
                    stop_pid(int(pid))
    listing = sh("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    # Pods first (their veths live in node namespaces), then nodes, externals, the fabric.
    # cilia-bench-* belong to a benchmark's own baselines, which remove them themselves.
    ours = (n for n in names if n.startswith("cilia-") and not n.startswith("cilia-bench-"))
    for name in sorted(ours, key=lambda n: (not n.startswith("cilia-pod"), n)):
        sh("ip", "netns", "del", name, check=False)
    from cilia.bpf import remove_pins

    nodes = [p.name for p in RUN_ROOT.iterdir() if p.is_dir() and p.name != "lab"] if RUN_ROOT.exists() else []
    for node in nodes:
        remove_pins(BPFFS_ROOT / node)
        shutil.rmtree(STATE_ROOT / node, ignore_errors=True)
        shutil.rmtree(RUN_ROOT / node, ignore_errors=True)
    if BPFFS_ROOT.exists() and not any(BPFFS_ROOT.iterdir()):
        BPFFS_ROOT.rmdir()
    remove_cgroups()
    shutil.rmtree(LAB_DIR, ignore_errors=True)


def remove_cgroups() -> None:
    """The lab's cgroup subtree, deepest first. Processes still in it are ours (lab servers, probes):
    stopped by the pids the cgroup lists, then the directories removed (cgroups are rmdir'ed, and
    the kernel drops the socket hooks attached to them with them)."""
    try:
        root = cgroup_root()
    except FileNotFoundError:
        return
    if not root.is_dir():
        return
    for cgroup in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            for line in (cgroup / "cgroup.procs").read_text().split():
                stop_pid(int(line), grace=2.0)
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()
