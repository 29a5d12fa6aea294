"""The cluster in a box: nodes with their agents, pods attached by the real CNI plugin, the servers
they run, external hosts; for a cluster lab (`kvstore: etcd`) the etcd members the agents share and
the faults tests inject into them; its state file; and the teardown that also sweeps a crashed lab's
leftovers.

Everything lives in network namespaces named cilia-*; the root namespace is never touched. The
wiring is cilia.lab.fabric's, the processes cilia.lab.process's: started detached, stopped by the
pid recorded in the state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from cilia.lab import certs, fabric
from cilia.lab import dns as lab_dns
from cilia.lab import relay as lab_relay
from cilia.lab.errors import LabError
from cilia.lab.etcd import ETCD_RUN_ROOT, EtcdCluster, EtcdMemberSpec, stop_leftover_members
from cilia.lab.process import (
    PYTHON,
    cgroup_root,
    exited,
    in_netns,
    join_cgroup,
    kill_pid,
    listening_ports,
    remove_cgroups,
    sh,
    spawn,
    stop_pid,
    stop_pid_files,
    wait_listening,
)
from cilia.lab.topology import CLUSTER_POD_RANGES, ExternalSpec, NodeSpec, PodSpec, PortSpec, Topology
from cilia.paths import BPFFS_ROOT, RUN_ROOT, STATE_ROOT, NodePaths
from cilia.testing.wait import WaitTimeout, wait_for

# The names callers use from here (the CLI, tests, benchmarks): the lab and what runs commands in it.
__all__ = ["LAB_DIR", "PYTHON", "STATE_FILE", "Lab", "LabError", "cleanup_leftovers", "in_netns",
           "namespace_object", "pod_object", "sh"]

LAB_DIR = RUN_ROOT / "lab"
STATE_FILE = LAB_DIR / "state.json"
ETCD_TOKEN = "cilia-lab"


def pod_object(pod: PodSpec) -> dict[str, Any]:
    """The Pod a lab pod is to the agent: its labels and its containers' (named) ports."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
        "spec": {"containers": [{"name": "main", "ports": [
            {"containerPort": p.port, "protocol": "UDP" if p.protocol == "udp" else "TCP",
             **({"name": p.name} if p.name else {})} for p in pod.ports]}]},
    }


def namespace_object(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


class Lab:
    """A lab and its state: saved to STATE_FILE after every step, so that `cilia lab` commands (other
    processes) find it and a lab whose `up` failed half-way can still be torn down."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.state: dict[str, Any] = state or {"nodes": {}, "pods": {}, "externals": {}, "pids": []}
        self._etcd: EtcdCluster | None = None

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
            if topology.cluster:
                lab._etcd_members(topology)
            for node in topology.nodes:
                lab._node(node, agent_args or [])
            for external in topology.externals:
                lab._external(external)
            if topology.dns:
                lab._dns()
            for node in topology.nodes:
                lab._wait_agent(node.name)
                lab._learn_pod_cidrs(node.name)
                lab.start_proxy(node.name)
            lab._apply_namespaces(topology)
            for pod in topology.pods:
                lab.add_pod(pod)
            if topology.relay:
                lab._relay([n.name for n in topology.nodes])
        except BaseException:
            lab.down()
            raise
        return lab

    def _fabric(self) -> None:
        self.state["fabric"] = fabric.FABRIC
        self.save()
        fabric.create_fabric()

    def _etcd_members(self, topology: Topology) -> None:
        """Each member in its own namespace on the underlay, started and answering before any agent;
        the flags every agent then gets (kvstore, routing mode, the cluster's native-routed ranges)."""
        tls_dir = self._etcd_certificates(topology) if topology.etcd_tls else None
        specs = [EtcdMemberSpec(m.name, m.netns, str(m.ipv4), tls_dir=str(tls_dir) if tls_dir else None)
                 for m in topology.members]
        self.state["kvstore"] = topology.kvstore
        self.state["routing"] = topology.routing
        self.state["etcd"] = {"token": ETCD_TOKEN, "members": [
            {"name": s.name, "netns": s.netns, "address": s.address, "client_port": s.client_port,
             "peer_port": s.peer_port, "tls_dir": s.tls_dir} for s in specs]}
        cluster = EtcdCluster(specs, token=ETCD_TOKEN)
        if tls_dir is not None:
            # Cilium's way: an etcd config file naming the endpoints, the CA and the client certificate
            self.state["etcd"]["tls_dir"] = str(tls_dir)
            connection = ["--kvstore-opt", f"etcd.config={self._etcd_config(tls_dir, cluster.client_urls)}"]
        else:
            connection = ["--kvstore-endpoints", ",".join(cluster.client_urls)]
        self.state["cluster_args"] = [
            "--kvstore", "etcd", *connection,
            "--routing-mode", topology.routing,
            "--ipv4-native-routing-cidr", str(CLUSTER_POD_RANGES[0]),
            "--ipv6-native-routing-cidr", str(CLUSTER_POD_RANGES[1]),
            *(topology.cluster_pool.agent_args() if topology.cluster_pool is not None else []),
        ]
        self.save()
        for member in topology.members:
            fabric.attach_host(member.netns, member.name, (str(member.ipv4), str(member.ipv6)),
                               fabric.NODE_GATEWAYS)
        self._etcd = cluster
        cluster.start()

    def _etcd_certificates(self, topology: Topology) -> Path:
        """The lab's CA, a server certificate per member and a client certificate for the agents."""
        directory = LAB_DIR / "etcd-tls"
        ca = certs.make_ca(directory)
        for member in topology.members:
            certs.issue(ca, directory, member.name, [str(member.ipv4), str(member.ipv6), "127.0.0.1"],
                        ["localhost"], server=True)
        certs.issue(ca, directory, "cilia-agent")
        return directory

    @staticmethod
    def _etcd_config(tls_dir: Path, endpoints: list[str]) -> Path:
        path = tls_dir / "etcd.config"
        path.write_text(yaml.safe_dump({
            "endpoints": endpoints, "trusted-ca-file": str(tls_dir / "ca.crt"),
            "cert-file": str(tls_dir / "cilia-agent.crt"), "key-file": str(tls_dir / "cilia-agent.key")}))
        return path

    def _node(self, node: NodeSpec, agent_args: list[str]) -> None:
        pooled = node.ipv4_pod_cidr is None  # its agent claims the CIDRs from the cluster pool
        self.state["nodes"][node.name] = {
            "name": node.name, "netns": node.netns, "ipv4": str(node.underlay_ipv4), "ipv6": str(node.underlay_ipv6),
            "ipv4_pod_cidr": None if pooled else str(node.ipv4_pod_cidr),
            "ipv6_pod_cidr": None if pooled else str(node.ipv6_pod_cidr), "pooled": pooled,
        }
        self.save()
        fabric.attach_host(node.netns, f"cilia-{node.name}", (str(node.underlay_ipv4), str(node.underlay_ipv6)),
                           fabric.NODE_GATEWAYS)
        self._route_pod_cidrs(node.name)
        if node.index == 1:  # LoadBalancer / externalIP addresses reach the first node
            for prefix, gateway in zip(fabric.SERVICE_ROUTES, (node.underlay_ipv4, node.underlay_ipv6), strict=True):
                fabric.route(prefix, str(gateway))
        # The node's cgroup: its pods' processes (and `lab exec` on the node) run below it, and the
        # agent attaches the socket load-balancing hooks to it.
        cgroup = cgroup_root() / node.name
        (cgroup / "host").mkdir(parents=True, exist_ok=True)
        self.state["nodes"][node.name]["cgroup"] = str(cgroup)
        self.save()
        self._start_agent(node.name, agent_args)

    def _route_pod_cidrs(self, node_name: str) -> None:
        """Native routing on the fabric: external hosts reach pods directly (ipBlock / fromCIDR ingress)."""
        node = self.state["nodes"][node_name]
        for cidr, via in ((node["ipv4_pod_cidr"], node["ipv4"]), (node["ipv6_pod_cidr"], node["ipv6"])):
            if cidr is not None:
                fabric.route(str(cidr), str(via))

    def _learn_pod_cidrs(self, node_name: str) -> None:
        """A pooled node's pod CIDRs, as its agent claimed them (its status), into the lab state and
        the fabric's routes (again after a restart: the claim is kept, so they stay the same)."""
        from cilia.api.client import AgentClient

        node = self.state["nodes"][node_name]
        if not node.get("pooled"):
            return
        with AgentClient(NodePaths(node_name).socket, timeout=10) as client:
            status = client.status()
        node["ipv4_pod_cidr"], node["ipv6_pod_cidr"] = status.ipv4_pod_cidr, status.ipv6_pod_cidr
        self.save()
        self._route_pod_cidrs(node_name)

    # ----- the relay ------------------------------------------------------------------------------
    def _relay(self, nodes: list[str]) -> None:
        """cilia-relay in its own namespace (cilia.lab.relay), answering before `up` returns."""
        self.state["relay"] = {"netns": lab_relay.NETNS, "socket": str(lab_relay.SOCKET),
                               "ui": lab_relay.UI_ADDRESS, "metrics": lab_relay.METRICS_ADDRESS, "nodes": nodes}
        self.save()
        lab_relay.create_netns()
        self.start_relay()

    @property
    def relay(self) -> dict[str, Any]:
        """Where the lab's relay serves (socket, ui, metrics, netns); LabError without one."""
        if "relay" not in self.state:
            raise LabError("this lab runs no relay (its topology has no `relay: true`)")
        return dict(self.state["relay"])

    def start_relay(self, timeout: float = 20.0) -> int:
        relay = self.state["relay"]
        endpoints = self.etcd.unix_endpoints if self.cluster else None
        pid = spawn(relay["netns"], lab_relay.relay_args(relay["nodes"], endpoints), LAB_DIR / "relay.log")
        relay["pid"] = pid
        self.save()

        def serving() -> bool:
            if exited(pid):
                log = (LAB_DIR / "relay.log").read_text()[-3000:]
                raise LabError(f"cilia-relay exited during start-up:\n{log}")
            ui_port = int(relay["ui"].rsplit(":", 1)[1])
            return Path(relay["socket"]).exists() and ui_port in listening_ports(relay["netns"])

        try:
            wait_for(serving, timeout, 0.1, "cilia-relay did not start serving")
        except WaitTimeout as exc:
            raise LabError(str(exc)) from exc
        return pid

    def stop_relay(self) -> None:
        relay = self.state.get("relay", {})
        if relay.get("pid"):
            stop_pid(int(relay.pop("pid")))
            self.save()

    def stop_agent(self, node_name: str, *, cleanup: bool = False) -> None:
        """SIGTERM the node's agent (its node goes away for the relay); start_agent brings it back.
        The node's datapath stays (it forwards while the agent is away); with `cleanup`, its nat
        rules and router addresses go too (`cilia-agent --cleanup` in the node's namespace)."""
        node = self.state["nodes"][node_name]
        stop_pid(int(node["agent_pid"]))
        if cleanup:
            self.cleanup_node(node_name)

    def cleanup_node(self, node_name: str) -> None:
        """`cilia-agent --cleanup` in the node's namespace (run it with the agent stopped)."""
        node = self.state["nodes"][node_name]
        cidrs = [arg for flag, key in (("--ipv4-pod-cidr", "ipv4_pod_cidr"), ("--ipv6-pod-cidr", "ipv6_pod_cidr"))
                 if node.get(key) for arg in (flag, str(node[key]))]
        sh(*in_netns(node["netns"], str(Path(PYTHON).with_name("cilia-agent")), "--cleanup", "--node", node_name,
                     *cidrs, "--underlay-device", "eth0"))

    def start_agent(self, node_name: str, agent_args: list[str] | None = None) -> int:
        pid = self._start_agent(node_name, agent_args or [])
        self._wait_agent(node_name)
        self._learn_pod_cidrs(node_name)
        return pid

    def restart_agent(self, node_name: str, *, kill: bool = True, agent_args: list[str] | None = None) -> int:
        """kill -9 (or SIGTERM) the node's agent and start a new one; returns the new pid."""
        node = self.state["nodes"][node_name]
        old = int(node["agent_pid"])
        if kill:
            kill_pid(old)
        else:
            stop_pid(old)
        pid = self._start_agent(node_name, agent_args or [])
        self._wait_agent(node_name)
        self._learn_pod_cidrs(node_name)
        return pid

    def start_proxy(self, node_name: str, timeout: float = 10) -> int:
        """The node's L7 proxy (cilia-proxy) in the node's netns, after its agent pinned the maps."""
        node = self.state["nodes"][node_name]
        log_file = NodePaths(node_name).run_dir / "proxy.log"
        log_file.unlink(missing_ok=True)
        pid = spawn(node["netns"], [str(Path(PYTHON).with_name("cilia-proxy")), "--node", node_name], log_file)
        node["proxy_pid"] = pid
        self.save()

        def listening() -> bool:
            if exited(pid):
                raise LabError(f"cilia-proxy of node {node_name} exited:\n{log_file.read_text()[-3000:]}")
            return log_file.exists() and "listening on" in log_file.read_text()

        try:
            wait_for(listening, timeout, 0.1, f"cilia-proxy of node {node_name} did not start listening")
        except WaitTimeout as exc:
            raise LabError(str(exc)) from exc
        return pid

    def stop_proxy(self, node_name: str) -> None:
        node = self.state["nodes"][node_name]
        if node.get("proxy_pid"):
            stop_pid(int(node.pop("proxy_pid")))
            self.save()

    def _start_agent(self, node_name: str, agent_args: list[str]) -> int:
        """The node's agent inside the node's netns, detached, its pid recorded in the lab state."""
        node = self.state["nodes"][node_name]
        static = [] if node.get("pooled") else [
            "--ipv4-pod-cidr", node["ipv4_pod_cidr"], "--ipv6-pod-cidr", node["ipv6_pod_cidr"]]
        pid = spawn(node["netns"], [
            str(Path(PYTHON).with_name("cilia-agent")), "--node", node_name, *static,
            "--underlay-device", "eth0", "--cgroup-root", node["cgroup"],
            *self.state.get("cluster_args", []), *agent_args,
        ], NodePaths(node_name).run_dir / "agent.log")
        node["agent_pid"] = pid
        self.save()
        return pid

    def _wait_agent(self, node_name: str, timeout: float = 30) -> None:
        from cilia.api.client import AgentClient, AgentError, AgentUnavailable

        paths = NodePaths(node_name)
        last_error = [""]

        def healthy() -> bool:
            if exited(int(self.state["nodes"][node_name]["agent_pid"])):
                log = (paths.run_dir / "agent.log").read_text()[-3000:]
                raise LabError(f"agent of node {node_name} exited during start-up:\n{log}")
            try:
                with AgentClient(paths.socket, timeout=2) as client:
                    client.healthz()
                    return True
            except (AgentUnavailable, AgentError) as exc:
                last_error[0] = str(exc)
                return False

        try:
            wait_for(healthy, timeout, 0.1, lambda: f"agent of node {node_name} not ready: {last_error[0]}")
        except WaitTimeout as exc:
            raise LabError(str(exc)) from exc

    def _external(self, external: ExternalSpec) -> None:
        self.state["externals"][external.name] = {"netns": external.netns, "ipv4": str(external.ipv4),
                                                  "ipv6": str(external.ipv6)}
        self.save()
        fabric.attach_host(external.netns, f"cilia-x{external.index}", (str(external.ipv4), str(external.ipv6)),
                           fabric.EXTERNAL_GATEWAYS)
        self._start_servers(external.netns, external.name, external.ports)

    def _dns(self) -> None:
        """dnsmasq with the test zone on external host `dns` (cilia.lab.dns); stopped by `down`."""
        self._external(lab_dns.DNS_HOST)
        fabric.wait_ipv6_settled([lab_dns.DNS_HOST.netns])  # dnsmasq binds its IPv6 address too
        log_file = LAB_DIR / "dnsmasq.log"
        pid = spawn(lab_dns.DNS_HOST.netns, lab_dns.command(lab_dns.write_config(LAB_DIR / "dns")), log_file)
        self.state["pids"].append(pid)
        self.state["dns"] = {"pid": pid, "ipv4": str(lab_dns.DNS_HOST.ipv4), "ipv6": str(lab_dns.DNS_HOST.ipv6),
                             "netns": lab_dns.DNS_HOST.netns}
        self.save()
        try:
            wait_for(lambda: not exited(pid) and 53 in listening_ports(lab_dns.DNS_HOST.netns), 10, 0.05,
                     "dnsmasq did not bind port 53")
        except WaitTimeout as exc:
            raise LabError(f"{exc}:\n{log_file.read_text()[-2000:] if log_file.exists() else ''}") from exc

    def _start_servers(self, netns: str, name: str, ports: tuple[PortSpec, ...], cgroup: Path | None = None) -> None:
        if not ports:
            return
        args = [PYTHON, "-m", "cilia.lab.server", "--name", name]
        for port in ports:
            args += [f"--{port.protocol}", str(port.port)]
        pid = spawn(netns, args, LAB_DIR / f"server-{netns}.log", cgroup)
        self.state["pids"].append(pid)
        self.save()
        wait_listening(netns, {p.port for p in ports})

    def _apply_namespaces(self, topology: Topology) -> None:
        """Each node's own store gets the Namespaces; in a cluster lab they go to etcd once, through
        the first node, and every node's agent is waited for until its watch has them (a pod's
        identity takes its namespace's labels, so a CNI ADD must not come first)."""
        from cilia.api.client import AgentClient
        from cilia.api.models import ApplyRequest

        objects = [namespace_object(name, labels) for name, labels in topology.namespaces.items()]
        for node in topology.nodes[:1] if self.cluster else topology.nodes:
            with AgentClient(NodePaths(node.name).socket) as client:
                client.apply(ApplyRequest(objects=objects))
        if self.cluster:
            for node in topology.nodes:
                for name in topology.namespaces:
                    self.wait_object(node.name, "Namespace", None, name)

    def wait_object(self, node_name: str, kind: str, namespace: str | None, name: str,
                    timeout: float = 30.0) -> None:
        """Bounded: until the node's agent lists the object (in a cluster lab, once its watch of etcd
        delivered it)."""
        from cilia.api.client import AgentClient, AgentError, AgentUnavailable

        def listed() -> bool:
            params = {"kind": kind, **({"namespace": namespace} if namespace else {})}
            try:
                with AgentClient(NodePaths(node_name).socket, timeout=5) as client:
                    found = client.get("/v1/resources", params)
            except (AgentUnavailable, AgentError):
                return False
            return any(o.get("metadata", {}).get("name") == name for o in found)

        where = f"{namespace}/{name}" if namespace else name
        try:
            wait_for(listed, timeout, 0.05, f"node {node_name} does not list {kind} {where}")
        except WaitTimeout as exc:
            raise LabError(str(exc)) from exc

    def add_pod(self, pod: PodSpec) -> dict[str, Any]:
        from cilia.api.client import AgentClient
        from cilia.api.models import ApplyRequest

        socket = NodePaths(pod.node).socket
        with AgentClient(socket) as client:  # in a cluster lab: once, into etcd, through its own node
            client.apply(ApplyRequest(objects=[pod_object(pod)]))
        if self.cluster:
            self.wait_object(pod.node, "Pod", pod.namespace, pod.name)
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
        for member in self.state.get("etcd", {}).get("members", []):
            if name == member["name"]:
                return str(member["netns"])
        raise LabError(f"no pod, node, external host or etcd member named {name!r} in the lab")

    def address_of(self, name: str, ipv6: bool = False) -> str:
        for key, pod in self.state["pods"].items():
            if name in (key, pod["name"]):
                return str(pod["ipv6" if ipv6 else "ipv4"])
        for table in ("nodes", "externals"):
            if name in self.state[table]:
                return str(self.state[table][name]["ipv6" if ipv6 else "ipv4"])
        for member in self.state.get("etcd", {}).get("members", []):
            if name == member["name"] and not ipv6:  # members serve on IPv4 only
                return str(member["address"])
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
                                stdout=subprocess.PIPE, text=True, preexec_fn=join_cgroup(self.cgroup_of(name)))

    def exec(self, name: str, command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(in_netns(self.netns_of(name), *command), capture_output=True, text=True,
                              timeout=timeout, check=False, preexec_fn=join_cgroup(self.cgroup_of(name)))

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
        fabric.wait_ipv6_settled([fabric.FABRIC, *(str(node["netns"]) for node in self.state["nodes"].values())],
                                 timeout)

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {"nodes": self.state["nodes"], "pods": list(self.state["pods"].values()),
                                "externals": self.state["externals"]}
        if "relay" in self.state:
            info["relay"] = self.state["relay"]
        if self.cluster:
            info["kvstore"] = self.state["kvstore"]
            info["routing"] = self.state["routing"]
            info["etcd"] = self.etcd.member_states()
        return info

    # ----- the cluster: etcd and its faults --------------------------------------------------------
    @property
    def cluster(self) -> bool:
        """Whether this lab's nodes share one etcd (`kvstore: etcd`)."""
        return "etcd" in self.state

    @property
    def etcd(self) -> EtcdCluster:
        """The lab's etcd members (from the state file when another process started them)."""
        if self._etcd is None:
            if not self.cluster:
                raise LabError("this lab has no etcd (its topology has no `kvstore: etcd`)")
            self._etcd = EtcdCluster([EtcdMemberSpec(**m) for m in self.state["etcd"]["members"]],
                                     token=self.state["etcd"]["token"])
        return self._etcd

    @property
    def etcd_members(self) -> list[str]:
        return [m.name for m in self.etcd.members]

    def etcd_leader(self, timeout: float = 10.0) -> str:
        return self.etcd.leader(timeout)

    def kill_etcd_member(self, name: str) -> None:
        """kill -9 one member."""
        self.etcd.kill(name)

    def kill_etcd_leader(self, timeout: float = 10.0) -> str:
        """kill -9 the current leader; returns its name."""
        leader = self.etcd.leader(timeout)
        self.etcd.kill(leader)
        return leader

    def kill_etcd(self) -> list[str]:
        """kill -9 every member (all of etcd down); returns their names for restart_etcd."""
        for name in self.etcd_members:
            self.etcd.kill(name)
        return self.etcd_members

    def restart_etcd(self, names: list[str] | None = None, timeout: float = 30.0) -> None:
        """Start killed members again on their data (default: every member not running) and wait until
        each answers."""
        down = names if names is not None else [n for n in self.etcd_members if self.etcd.pid(n) is None]
        self.etcd.restart_many(down, timeout)

    def _etcd_cut_routes(self, node_name: str) -> list[tuple[str, str]]:
        """(namespace, destination) of every blackhole route that cuts a node off from etcd: in the
        node's namespace to each member, in each member's namespace to the node. Both ways: with
        only the node's routes, etcd's pushes (watch events) would still arrive."""
        node = self.state["nodes"][node_name]
        members = self.state["etcd"]["members"]
        routes = [(str(node["netns"]), f"{m['address']}/32") for m in members]
        routes += [(str(m["netns"]), f"{node['ipv4']}/32") for m in members]
        routes += [(str(m["netns"]), f"{node['ipv6']}/128") for m in members]
        return routes

    def cut_off_etcd(self, node_name: str) -> None:
        """The node loses its way to every etcd member and theirs to it: blackhole routes both ways
        (its agent's etcd connections fail; the node's traffic to other nodes is untouched)."""
        for netns, destination in self._etcd_cut_routes(node_name):
            sh("ip", "-n", netns, "route", "replace", "blackhole", destination)
        self.state["nodes"][node_name]["etcd_cut_off"] = True
        self.save()

    def restore_etcd(self, node_name: str) -> None:
        """Undo cut_off_etcd."""
        for netns, destination in self._etcd_cut_routes(node_name):
            sh("ip", "-n", netns, "route", "del", "blackhole", destination, check=False)
        self.state["nodes"][node_name].pop("etcd_cut_off", None)
        self.save()

    # ----- down ------------------------------------------------------------------------------------
    def down(self) -> None:
        """Stop processes, DEL pods through CNI while the agent still runs, remove namespaces."""
        for pod in list(self.state.get("pods", {}).values()):
            if "ipv4" in pod or "mac" in pod:
                try:
                    self.cni("DEL", pod)
                except Exception as exc:  # teardown goes on: leftovers are swept below
                    print(f"lab down: CNI DEL of {pod['namespace']}/{pod['name']} failed: {exc}", file=sys.stderr)
        self.stop_relay()
        for pid in self.state.get("pids", []):
            stop_pid(int(pid))
        for node in self.state.get("nodes", {}).values():
            if node.get("proxy_pid"):
                stop_pid(int(node["proxy_pid"]))
            if node.get("agent_pid"):
                stop_pid(int(node["agent_pid"]))
        if self.cluster:  # after the agents: they would spend their shutdown retrying a gone etcd
            try:
                self.etcd.stop()
            except Exception as exc:  # swept below by the members' pid files
                print(f"lab down: stopping etcd failed: {exc}", file=sys.stderr)
        cleanup_leftovers()


def cleanup_leftovers() -> None:
    """Remove everything a lab (also a crashed one) may have left: agents by their pid files and the
    pids in the state file, etcd members by theirs (with their data and sockets), cilia-* namespaces
    (never a benchmark's cilia-bench-*), node state and run dirs, bpffs pins, the lab's cgroups."""
    # the node's processes by their pid files (a proxy whose pid the state file lost too). Not the
    # workers' proxy.pid: it outlives its worker, and a stale pid may name somebody else's process
    # now; a stopped supervisor takes its workers with it (they die with their parent).
    for name in ("proxy-supervisor.pid", "agent.pid"):
        stop_pid_files(RUN_ROOT.glob(f"*/{name}") if RUN_ROOT.exists() else [])
    if STATE_FILE.exists():
        with contextlib.suppress(ValueError, OSError):
            state = json.loads(STATE_FILE.read_text())
            pids = state.get("pids", []) + [n.get(key) for n in state.get("nodes", {}).values()
                                            for key in ("agent_pid", "proxy_pid")]
            for pid in [state.get("relay", {}).get("pid"), *pids]:
                if pid:
                    stop_pid(int(pid))
    stop_leftover_members()
    fabric.remove_namespaces()
    from cilia.bpf import remove_pins

    shutil.rmtree(lab_relay.RUN_DIR, ignore_errors=True)
    not_nodes = {LAB_DIR.name, ETCD_RUN_ROOT.name, lab_relay.RUN_DIR.name}
    nodes = [p.name for p in RUN_ROOT.iterdir() if p.is_dir() and p.name not in not_nodes] if RUN_ROOT.exists() else []
    for node in nodes:
        remove_pins(BPFFS_ROOT / node)
        shutil.rmtree(STATE_ROOT / node, ignore_errors=True)
        shutil.rmtree(RUN_ROOT / node, ignore_errors=True)
    if BPFFS_ROOT.exists() and not any(BPFFS_ROOT.iterdir()):
        BPFFS_ROOT.rmdir()
    remove_cgroups()
    shutil.rmtree(LAB_DIR, ignore_errors=True)
