"""kube-proxy's iptables mode, reproduced in lab namespaces: the baseline half of bench.services.

kube-proxy itself is not installable here, so this module writes the iptables-restore input its
iptables proxier writes (pkg/proxy/iptables/proxier.go as of v1.28, MinimizeIPTablesRestore on,
detect-local-mode ClusterCIDR, default flags) for a set of TCP ClusterIP services, and loads it the
way kube-proxy does: one `iptables-restore -w 5 -W 100000 --noflush --counters` of the filter and
nat tables together, inside a `cilia-bench-*` namespace (never the root namespace). Either iptables
backend: legacy (the default) or nft; kube-proxy's image carries both and follows the host.

What is reproduced, rule for rule:
- nat: KUBE-SERVICES, KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-MARK-MASQ; PREROUTING and OUTPUT jump
  to KUBE-SERVICES ("kubernetes service portals"), POSTROUTING to KUBE-POSTROUTING; KUBE-POSTROUTING
  returns unmarked packets, clears the mark and MASQUERADEs (--random-fully) the marked ones;
  KUBE-MARK-MASQ ORs in 0x00004000 (masqueradeBit 14, printed with kube-proxy's "%#08x").
- per service port: a KUBE-SERVICES rule `-m comment --comment "ns/name[:port] cluster IP" -m tcp
  -p tcp -d CLUSTERIP --dport PORT -j KUBE-SVC-X` (iptables-save prints it as `-d CLUSTERIP/32 -p tcp
  -m comment ... -m tcp --dport PORT`); chain KUBE-SVC-X, X = the first 16 characters of
  base32(sha256(servicePortName + "tcp")) (portProtoHash), holding the KUBE-MARK-MASQ rule for
  traffic not from the cluster CIDR, then one rule per endpoint with `-m statistic --mode random
  --probability 1/(n-i)` printed "%0.10f" (the last rule without) jumping to KUBE-SEP-Y, Y the same
  hash over servicePortName + protocol + "ip:port"; each KUBE-SEP-Y chain: `-s IP -j KUBE-MARK-MASQ`,
  `-m tcp -p tcp -j DNAT --to-destination IP:PORT`.
- KUBE-SERVICES ends with `-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS` (the nodeports rule).
- "large cluster mode" (more than 1,000 endpoints): the per-endpoint comments in KUBE-SVC/KUBE-SEP
  chains are left out, as kube-proxy does to shrink the input.
- filter: KUBE-FORWARD (INVALID drop, masquerade-mark accept, RELATED,ESTABLISHED accept) and the
  empty KUBE-SERVICES/KUBE-EXTERNAL-SERVICES/KUBE-NODEPORTS/KUBE-PROXY-FIREWALL chains with their
  jumps from INPUT/FORWARD/OUTPUT, and kubelet's KUBE-FIREWALL localnet rule: every forwarded packet
  crosses these, as on a real node.
- rule layout of a sync: chain lines first, then per service port its KUBE-SERVICES rule followed
  by its own chains' rules, the nodeports rule last. A partial sync (MinimizeIPTablesRestore, the
  default since v1.27/GA in v1.28) writes the whole filter table, the four top-level nat chains,
  every KUBE-SERVICES rule, and the KUBE-SVC/KUBE-SEP chains of changed services only.

What differs from a live kube-proxy:
- kube-proxy ensures the jump rules with `iptables -C`/`-I` calls before its first restore (and on
  every full sync); here the first restore input carries them, giving the same rules. Full resyncs
  in control_plane() do make those calls and time them.
- kube-proxy emits services in Go map order (random): on average a new connection to a service
  walks half of KUBE-SERVICES. Here the measured service sits in the middle of KUBE-SERVICES.
- only ClusterIP services (no NodePort, LoadBalancer, externalIPs, session affinity, health checks).
- with the nft backend the datapath lab loads its rules without --noflush (same rules into an empty
  namespace): iptables-nft-restore 1.8.9 with --noflush grows about 8x per doubling (1.3 s for 500
  services x 10 endpoints, 7-11 s for 1,000, 80 s for 2,000; 10,000 had not finished after 11 minutes)
  in userspace. control_plane() keeps --noflush and reports a timeout when its bound is reached.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from statistics import median
from typing import Any

from bench.tools import PORTS, Server, ns, server_command
from bench.topologies import delete, sh, wire_routed_node
from cilia.testing import WaitTimeout, wait_for

SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
CLUSTER_CIDR = "10.128.0.0/10"  # --cluster-cidr: the pod network; the lab pods live in it
FILLER_BACKENDS = ipaddress.IPv4Address("10.129.0.0")  # pod addresses nothing answers on (never hit)
CHANGED_BACKENDS = ipaddress.IPv4Address("10.190.0.0")  # addresses a control-plane change swaps in
MEASURED_CLUSTER_IP = "10.96.0.10"
MEASURED_SERVICE = ("default", "bench-svc")
FILLER_PORT, FILLER_TARGET_PORT = 80, 8080
MASQ_MARK = f"{1 << 14:#010x}"  # Go's "%#08x" zero-pads the digits to 8: 0x00004000
LARGE_CLUSTER_ENDPOINTS = 1000  # kube-proxy's largeClusterEndpointsThreshold
# kube-proxy's flags (pkg/util/iptables: wait flags for iptables >= 1.6.2, NoFlushTables, RestoreCounters)
WAIT = ("-w", "5", "-W", "100000")
RESTORE_FLAGS = ("--noflush", "--counters")
# The two iptables backends; kube-proxy's image carries both and its iptables-wrapper picks the one the
# host uses. legacy is the default here: iptables-nft-restore 1.8.9 (this machine's, and kube-proxy's
# bookworm-based image's) is superlinear with --noflush, see control_plane().
BACKENDS = {"legacy": ("iptables-legacy", "iptables-legacy-restore", "iptables-legacy-save"),
            "nft": ("iptables-nft", "iptables-nft-restore", "iptables-nft-save")}
DEFAULT_BACKEND = "legacy"
LAB_BACKENDS = ("10.128.2.2", "10.128.3.2")
SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-SEP-", "KUBE-FW-", "KUBE-EXT-")

# kube-proxy's iptablesJumpChains then iptablesKubeletJumpChains: (table, target, from chain, comment, extra).
# Each is ensured with a prepend (-I), so in every built-in chain the last one listed ends up first.
JUMPS: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", ()),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ()),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall",
     ("-m", "conntrack", "--ctstate", "NEW")),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ()),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ()),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ()),
    ("filter", "KUBE-FIREWALL", "INPUT", "", ()),
    ("filter", "KUBE-FIREWALL", "OUTPUT", "", ()),
)


class KubeProxyError(Exception):
    """The kube-proxy lab could not be set up or measured as intended."""


class RestoreTimeout(KubeProxyError):
    """An iptables-restore did not finish within its bound (and was killed)."""


def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def probability(n: int) -> str:
    """kube-proxy's computeProbability: fmt.Sprintf("%0.10f", 1.0/float64(n))."""
    return f"{1.0 / n:.10f}"


@dataclass(frozen=True)
class ServicePort:
    """One service port as kube-proxy's svcPortMap holds it, with its ready endpoints ("ip:port")."""

    namespace: str
    name: str
    port_name: str  # "" for an unnamed port (single-port services usually are)
    cluster_ip: str
    port: int
    endpoints: tuple[str, ...]
    protocol: str = "tcp"

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def name_string(self) -> str:
        """ServicePortName.String(): ns/name, plus ":portname" if the port is named."""
        return self.service + (f":{self.port_name}" if self.port_name else "")

    @property
    def svc_chain(self) -> str:
        """servicePortPolicyClusterChain."""
        return "KUBE-SVC-" + _hash16(self.name_string + self.protocol)

    def sep_chain(self, endpoint: str) -> str:
        """servicePortEndpointChainName."""
        return "KUBE-SEP-" + _hash16(self.name_string + self.protocol + endpoint)


def cluster_ip(index: int) -> str:
    """Filler service `index`'s ClusterIP in 10.96.0.0/12 (from 10.96.0.16; .10 is the measured one)."""
    address = SERVICE_CIDR.network_address + 16 + index
    if address not in SERVICE_CIDR or address == SERVICE_CIDR.broadcast_address:
        raise ValueError(f"service {index} does not fit in {SERVICE_CIDR}")
    return str(address)


def filler_backend(service: int, backend: int, per_service: int) -> str:
    """Backend `backend` of filler service `service`: a pod address in the cluster CIDR nothing answers on."""
    return str(FILLER_BACKENDS + service * per_service + backend)


def filler_services(count: int, backends_per_service: int) -> list[ServicePort]:
    """`count` single-port services default/filler-<i> (port 80, unnamed) with `backends_per_service`
    endpoints each on 8080 that do not exist: never hit, they only make the chains long."""
    return [ServicePort("default", f"filler-{i}", "", cluster_ip(i), FILLER_PORT,
                        tuple(f"{filler_backend(i, j, backends_per_service)}:{FILLER_TARGET_PORT}"
                              for j in range(backends_per_service)))
            for i in range(count)]


def measured_service_ports(backend_ips: Sequence[str]) -> list[ServicePort]:
    """default/bench-svc: one named port per measuring tool (kube-proxy has one KUBE-SVC chain per
    service port), each balanced over the real backends."""
    namespace, name = MEASURED_SERVICE
    return [ServicePort(namespace, name, tool, MEASURED_CLUSTER_IP, port, tuple(f"{ip}:{port}" for ip in backend_ips))
            for tool, port in PORTS.items()]


def lab_services(services: int, backends_per_service: int, backend_ips: Sequence[str] = LAB_BACKENDS,
                 measured_at: float = 0.5) -> list[ServicePort]:
    """`services` services: services - 1 fillers and the measured one, placed at `measured_at`
    (a fraction) of KUBE-SERVICES: kube-proxy's order is random, the middle is the average."""
    if services < 1:
        raise ValueError("services must be at least 1 (the measured one)")
    fillers = filler_services(services - 1, backends_per_service)
    at = round(len(fillers) * measured_at)
    return [*fillers[:at], *measured_service_ports(backend_ips), *fillers[at:]]


def _comment(text: str) -> list[str]:
    return ["-m", "comment", "--comment", f'"{text}"' if " " in text else text]


def render(ports: Sequence[ServicePort], *, changed: Collection[str] | None = None, jump_rules: bool = False,
           deleted_chains: Collection[str] = ()) -> str:
    """The iptables-restore input of one kube-proxy sync (syncProxyRules) for `ports`.

    changed None: a full sync (every chain). Otherwise a partial sync: only the services named in
    `changed` ("ns/name") get their KUBE-SVC/KUBE-SEP chains rewritten; KUBE-SERVICES is always
    rewritten whole. jump_rules: add the built-in chains' jumps (kube-proxy's EnsureRule calls, here
    for a first load into an empty namespace). deleted_chains: stale service chains to flush and
    delete (-X), as a sync does after iptables-save found them."""
    large = sum(len(p.endpoints) for p in ports) > LARGE_CLUSTER_ENDPOINTS
    filter_chains = ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
                     "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL"]
    filter_rules = [
        ["-A", "KUBE-FIREWALL", *_comment("block incoming localnet connections"), "-d", "127.0.0.0/8",
         "!", "-s", "127.0.0.0/8", "-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP"],
        ["-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"],
        ["-A", "KUBE-FORWARD", *_comment("kubernetes forwarding rules"), "-m", "mark", "--mark",
         f"{MASQ_MARK}/{MASQ_MARK}", "-j", "ACCEPT"],
        ["-A", "KUBE-FORWARD", *_comment("kubernetes forwarding conntrack rule"), "-m", "conntrack", "--ctstate",
         "RELATED,ESTABLISHED", "-j", "ACCEPT"],
    ]
    nat_chains = ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    nat_rules = [
        ["-A", "KUBE-POSTROUTING", "-m", "mark", "!", "--mark", f"{MASQ_MARK}/{MASQ_MARK}", "-j", "RETURN"],
        ["-A", "KUBE-POSTROUTING", "-j", "MARK", "--xor-mark", MASQ_MARK],
        ["-A", "KUBE-POSTROUTING", *_comment("kubernetes service traffic requiring SNAT"), "-j", "MASQUERADE",
         "--random-fully"],
        ["-A", "KUBE-MARK-MASQ", "-j", "MARK", "--or-mark", MASQ_MARK],
    ]
    for p in ports:
        match = [*_comment(f"{p.name_string} cluster IP"), "-m", p.protocol, "-p", p.protocol, "-d", p.cluster_ip,
                 "--dport", str(p.port)]
        nat_rules.append(["-A", "KUBE-SERVICES", *match, "-j", p.svc_chain])
        if changed is not None and p.service not in changed:
            continue  # unchanged since the last sync: its chains stay as they are
        nat_rules.append(["-A", p.svc_chain, *match, "!", "-s", CLUSTER_CIDR, "-j", "KUBE-MARK-MASQ"])
        nat_chains.append(p.svc_chain)
        n = len(p.endpoints)
        for i, endpoint in enumerate(p.endpoints):
            rule = ["-A", p.svc_chain, *([] if large else _comment(f"{p.name_string} -> {endpoint}"))]
            if i < n - 1:
                rule += ["-m", "statistic", "--mode", "random", "--probability", probability(n - i)]
            nat_rules.append([*rule, "-j", p.sep_chain(endpoint)])
        for endpoint in p.endpoints:
            sep = p.sep_chain(endpoint)
            nat_chains.append(sep)
            head = ["-A", sep, *([] if large else _comment(p.name_string))]
            nat_rules.append([*head, "-s", endpoint.rsplit(":", 1)[0], "-j", "KUBE-MARK-MASQ"])
            nat_rules.append([*head, "-m", p.protocol, "-p", p.protocol, "-j", "DNAT", "--to-destination", endpoint])
    for chain in deleted_chains:
        nat_chains.append(chain)
        nat_rules.append(["-X", chain])
    nat_rules.append(["-A", "KUBE-SERVICES",
                      *_comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain"),
                      "-m", "addrtype", "--dst-type", "LOCAL", "-j", "KUBE-NODEPORTS"])
    jumps: dict[str, list[list[str]]] = {"filter": [], "nat": []}
    if jump_rules:
        for table, target, source, comment, extra in reversed(JUMPS):
            jumps[table].append(["-A", source, *extra, *(_comment(comment) if comment else []), "-j", target])
    lines = ["*filter", *(f":{c} - [0:0]" for c in filter_chains), *(" ".join(r) for r in jumps["filter"]),
             *(" ".join(r) for r in filter_rules), "COMMIT",
             "*nat", *(f":{c} - [0:0]" for c in nat_chains), *(" ".join(r) for r in jumps["nat"]),
             *(" ".join(r) for r in nat_rules), "COMMIT", ""]
    return "\n".join(lines)


def kube_proxy_rules(services: int, backends_per_service: int, backend_ips: Sequence[str] = LAB_BACKENDS, *,
                     measured_at: float = 0.5, jump_rules: bool = True) -> str:
    """The restore input (filter + nat, as kube-proxy writes them in one go) of a node with `services`
    ClusterIP services: services - 1 fillers of `backends_per_service` non-existent endpoints and the
    measured default/bench-svc (MEASURED_CLUSTER_IP, one port per tool, DNAT to backend_ips)."""
    return render(lab_services(services, backends_per_service, backend_ips, measured_at), jump_rules=jump_rules)


def restore_command(backend: str = DEFAULT_BACKEND, *, noflush: bool = True) -> list[str]:
    """kube-proxy's `iptables-restore -w 5 -W 100000 --noflush --counters` for `backend`."""
    return [BACKENDS[backend][1], *WAIT, *(RESTORE_FLAGS if noflush else RESTORE_FLAGS[1:])]


def restore(netns: str, text: str, backend: str = DEFAULT_BACKEND, *, noflush: bool = True,
            timeout: float = 900) -> float:
    """Load `text` in `netns` with kube-proxy's iptables-restore command; seconds it took."""
    start = time.monotonic()
    try:
        result = subprocess.run(ns(netns, *restore_command(backend, noflush=noflush)), input=text,
                                capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        raise RestoreTimeout(f"{BACKENDS[backend][1]} of {text.count(chr(10))} lines in {netns} did not finish "
                             f"in {timeout:.0f} s") from exc
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise KubeProxyError(f"{BACKENDS[backend][1]} in {netns} failed ({result.returncode}): "
                             f"{(result.stderr or result.stdout).strip()[-500:]}")
    return elapsed


def iptables(netns: str, *args: str, backend: str = DEFAULT_BACKEND,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(ns(netns, BACKENDS[backend][0], *WAIT, *args), capture_output=True, text=True,
                            timeout=300, check=False)
    if check and result.returncode != 0:
        raise KubeProxyError(f"{BACKENDS[backend][0]} {' '.join(args)} in {netns}: {result.stderr.strip()[-300:]}")
    return result


def iptables_save_nat(netns: str, backend: str = DEFAULT_BACKEND) -> str:
    result = subprocess.run(ns(netns, BACKENDS[backend][2], "-t", "nat"), capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        raise KubeProxyError(f"{BACKENDS[backend][2]} -t nat in {netns}: {result.stderr.strip()[-300:]}")
    return result.stdout


def iptables_version(backend: str = DEFAULT_BACKEND) -> str:
    return subprocess.run([BACKENDS[backend][0], "-V"], capture_output=True, text=True, timeout=30,
                          check=False).stdout.strip()


def wait_listening(netns: str, ports: Collection[int], timeout: float = 10.0) -> None:
    missing: set[int] = set(ports)

    def all_listening() -> bool:
        listing = subprocess.run(ns(netns, "ss", "-Htln"), capture_output=True, text=True, timeout=30,
                                 check=False).stdout
        missing.clear()
        missing.update(set(ports) - {int(m) for m in re.findall(r":(\d+)\s", listing)})
        return not missing

    try:
        wait_for(all_listening, timeout, 0.1, lambda: f"no server listening on TCP {sorted(missing)} in {netns}")
    except WaitTimeout as exc:
        raise KubeProxyError(str(exc)) from exc


def start_servers(netns: str, ip: str) -> list[Server]:
    """Every tool's server (bench.tools.server_command) in one backend namespace, listening."""
    servers: list[Server] = []
    try:
        for tool in PORTS:
            servers.append(Server(netns, *server_command(tool, ip)))
        wait_listening(netns, PORTS.values())
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def wait_reachable(client: str, ip: str, ports: Collection[int], timeout: float = 30.0) -> None:
    """Bounded: until a TCP connection from `client` to ip:port succeeds for every port (iperf3's port
    is not probed: a bare connect makes its server log an error)."""
    pending = list(ports)
    last = [""]

    def all_reached() -> bool:  # one budget for all the ports, probed in turn
        while pending:
            result = subprocess.run(ns(client, sys.executable, "-m", "cilia.lab.probe", "--to", ip, "--port",
                                       str(pending[0]), "--timeout", "1"), capture_output=True, text=True,
                                    timeout=30, check=False)
            if result.returncode != 0:
                last[0] = (result.stdout or result.stderr).strip()[-300:]
                return False
            pending.pop(0)
        return True

    try:
        wait_for(all_reached, timeout, 0.2, lambda: f"{ip}:{pending[0]} not reachable from {client}: {last[0]}")
    except WaitTimeout as exc:
        raise KubeProxyError(str(exc)) from exc


@dataclass(frozen=True)
class ServiceFigures:
    """What a service datapath is measured on: request/response latency (sockperf TCP ping-pong, 64 B,
    one-way = RTT/2) and new connections per second (the CPS meter), both to the service address.

    No throughput: iperf3 opens a control and a data connection, and a service with two backends may
    balance them to different servers, which then refuse the test."""

    latency_avg_us: float
    latency_p99_us: float
    connections_per_s: float


def median_figures(samples: Sequence[ServiceFigures]) -> ServiceFigures:
    return ServiceFigures(latency_avg_us=round(median(s.latency_avg_us for s in samples), 2),
                          latency_p99_us=round(median(s.latency_p99_us for s in samples), 2),
                          connections_per_s=round(median(s.connections_per_s for s in samples), 0))


@dataclass
class KubeProxyLab:
    """A kube-proxy node (iptables mode) with a client pod and two backend pods behind the measured service."""

    client: str
    node: str
    cluster_ip: str
    backends: tuple[str, ...]
    backend_ips: tuple[str, ...]
    services: int
    backends_per_service: int
    backend: str = DEFAULT_BACKEND
    load_command: str = ""
    restore_seconds: float = 0.0
    restore_lines: int = 0
    kube_services_rules: int = 0
    ports: list[ServicePort] = field(default_factory=list)

    def backend_hits(self) -> dict[str, int]:
        """Connections DNATed to each real backend so far (packet counters of the measured service's
        KUBE-SEP DNAT rules, over all its ports): proof the traffic went through the rules."""
        hits = dict.fromkeys(self.backend_ips, 0)
        for p in self.ports:
            for endpoint in p.endpoints:
                listing = iptables(self.node, "-t", "nat", "-L", p.sep_chain(endpoint), "-n", "-v", "-x",
                                   backend=self.backend).stdout
                for line in listing.splitlines():
                    fields = line.split()
                    if "DNAT" in fields and fields[0].isdigit():
                        hits[endpoint.rsplit(":", 1)[0]] += int(fields[0])
        return hits

    def summary(self) -> dict[str, Any]:
        return {"services": self.services, "backends_per_service": self.backends_per_service,
                "iptables": iptables_version(self.backend), "load_command": self.load_command,
                "restore_seconds": round(self.restore_seconds, 3), "restore_lines": self.restore_lines,
                "kube_services_rules": self.kube_services_rules}


@contextmanager
def kube_proxy_node(services: int, backends_per_service: int = 10,
                    backend: str = DEFAULT_BACKEND, prefix: str = "cilia-bench-kp") -> Iterator[KubeProxyLab]:
    """A node running kube-proxy's iptables rules for `services` services (see the module docstring),
    wired like topologies.routed_iptables: pods on veths into the node namespace, which forwards.

    <prefix>-client (10.128.1.2), the client pod; <prefix>-node, the node, with the rules;
    <prefix>-b1/b2 (10.128.2.2, 10.128.3.2), the measured service's backends, running every tool's
    server (two nodes with different prefixes can be up together: each has its own namespaces). All
    four namespaces are deleted on the way out, also on failure.

    The rules are loaded with kube-proxy's restore command, and how long that took is recorded. With
    backend "nft" --noflush is left out: iptables-nft-restore 1.8.9 takes hours for 10,000 services
    with it, and into an empty namespace both load the same rules (control_plane() times it as is)."""
    if not prefix.startswith("cilia-bench-"):
        raise KubeProxyError(f"namespace prefix {prefix!r} must start with cilia-bench- (removed by cleanups)")
    client, node, b1, b2 = (f"{prefix}-{role}" for role in ("client", "node", "b1", "b2"))
    names = (client, node, b1, b2)
    delete(*names)
    servers: list[Server] = []
    try:
        wire_routed_node(node, (client, b1, b2), "10.128")  # 10.128.1.2 client, .2.2 and .3.2 backends
        # route_localnet: kube-proxy sets it for localhost NodePorts (the default).
        sh(*ns(node, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"))
        backend_ips = LAB_BACKENDS
        noflush = backend != "nft"
        lab = KubeProxyLab(client, node, MEASURED_CLUSTER_IP, (b1, b2), backend_ips, services, backends_per_service,
                           backend, " ".join(restore_command(backend, noflush=noflush)),
                           ports=measured_service_ports(backend_ips))
        text = kube_proxy_rules(services, backends_per_service, backend_ips)
        lab.restore_lines = text.count("\n")
        lab.restore_seconds = restore(node, text, backend, noflush=noflush)
        listing = iptables(node, "-t", "nat", "-S", "KUBE-SERVICES", backend=backend).stdout
        lab.kube_services_rules = sum(1 for line in listing.splitlines() if line.startswith("-A "))
        expected = services - 1 + len(PORTS) + 1  # one per service port, and the nodeports rule
        if lab.kube_services_rules != expected:
            raise KubeProxyError(f"KUBE-SERVICES has {lab.kube_services_rules} rules, expected {expected}")
        for netns, ip in zip((b1, b2), backend_ips, strict=True):
            servers += start_servers(netns, ip)
        wait_reachable(client, MEASURED_CLUSTER_IP, [PORTS["sockperf"], PORTS["cps"]])
        yield lab
    finally:
        for server in servers:
            server.stop()
        delete(*names)


def _ensure_jumps(netns: str, backend: str) -> None:
    """kube-proxy's full-sync EnsureChain/EnsureRule: `iptables -N` (exists is fine), `-C`, `-I` if missing."""
    for table, target, source, comment, extra in JUMPS:
        iptables(netns, "-t", table, "-N", target, backend=backend, check=False)
        args = [*extra, *(["-m", "comment", "--comment", comment] if comment else []), "-j", target]
        if iptables(netns, "-t", table, "-C", source, *args, backend=backend, check=False).returncode != 0:
            iptables(netns, "-t", table, "-I", source, *args, backend=backend)


def control_plane(services: int, backends: int, backend: str = DEFAULT_BACKEND, changes: int = 3,
                  timeout: float = 120) -> dict[str, Any]:
    """kube-proxy's programming cost in a throwaway namespace (cilia-bench-kp-cp), `services` filler
    services x `backends` endpoints, every restore with kube-proxy's command (--noflush --counters):

    - initial: the whole restore input into empty tables (kube-proxy's first sync);
    - one change, `changes` times (median reported): one service's endpoint set changes (one endpoint
      replaced by a new address), synced the MinimizeIPTablesRestore way: filter table, top-level nat
      chains, all of KUBE-SERVICES, and that service's KUBE-SVC and KUBE-SEP chains (the old KUBE-SEP
      chain is left behind: in large cluster mode kube-proxy deletes stale chains only on its
      periodic cleanup);
    - full resync: what a full sync runs: the jump-rule checks (iptables -N/-C per jump), iptables-save
      of nat to find stale chains, then the whole table restored with the stale ones deleted.

    Seconds are wall clock of the iptables commands only; generating the text (Go in kube-proxy,
    Python here) is not counted. Each restore is bounded by `timeout` seconds: iptables-nft-restore
    1.8.9 with --noflush grows about 8x per doubling (here 1.3 s at 500 services x 10, 7-11 s at 1,000,
    80 s at 2,000). A restore that times out is reported as null with `timed_out_after`; if it was the
    initial one, the same rules are then loaded without --noflush (recorded) so the rest can go on."""
    netns = "cilia-bench-kp-cp"
    delete(netns)
    result: dict[str, Any] = {"services": services, "backends_per_service": backends,
                              "iptables": iptables_version(backend),
                              "restore_command": " ".join(restore_command(backend)),
                              "restore_timeout_seconds": timeout}

    def bounded(text: str) -> float | None:
        try:
            return round(restore(netns, text, backend, timeout=timeout), 4)
        except RestoreTimeout:
            return None

    try:
        sh("ip", "netns", "add", netns)
        ports = filler_services(services, backends)
        full = render(ports, jump_rules=True)
        result["initial_restore_seconds"] = bounded(full)
        if result["initial_restore_seconds"] is None:
            result["initial_timed_out_after"] = timeout
            sh("ip", "netns", "del", netns)  # whatever the killed restore left, start from empty again
            sh("ip", "netns", "add", netns)
            result["initial_loaded_without_noflush_seconds"] = round(
                restore(netns, full, backend, noflush=False, timeout=max(timeout, 900)), 3)
        target = services // 2
        change_seconds: list[float | None] = []
        partial = ""
        for k in range(changes):
            p = ports[target]
            endpoints = list(p.endpoints)
            endpoints[k % len(endpoints)] = f"{CHANGED_BACKENDS + k}:{FILLER_TARGET_PORT}"
            ports[target] = replace(p, endpoints=tuple(endpoints))
            partial = render(ports, changed={p.service})
            change_seconds.append(bounded(partial))
            if change_seconds[-1] is None:
                break  # the table is in an unknown state now
            new_sep = ports[target].sep_chain(endpoints[k % len(endpoints)])
            if new_sep not in iptables(netns, "-t", "nat", "-S", p.svc_chain, backend=backend).stdout:
                raise KubeProxyError(f"after the partial restore {p.svc_chain} does not jump to {new_sep}")
        done = [s for s in change_seconds if s is not None]
        result["change_restore_seconds"] = round(median(done), 4) if len(done) == len(change_seconds) else None
        result["change_restore_seconds_each"] = change_seconds
        result["rules"] = {"full_input_lines": full.count("\n"), "full_input_bytes": len(full),
                           "change_input_lines": partial.count("\n"), "change_input_bytes": len(partial)}
        if result["change_restore_seconds"] is None:
            result["change_timed_out_after"] = timeout
            return result
        start = time.monotonic()
        _ensure_jumps(netns, backend)
        ensure_seconds = time.monotonic() - start
        start = time.monotonic()
        saved = iptables_save_nat(netns, backend)
        save_seconds = time.monotonic() - start
        active = {p.svc_chain for p in ports} | {p.sep_chain(e) for p in ports for e in p.endpoints}
        existing = [line[1:].split()[0] for line in saved.splitlines() if line.startswith(":")]
        stale = [c for c in existing if c.startswith(SERVICE_CHAIN_PREFIXES) and c not in active]
        resync_restore = bounded(render(ports, deleted_chains=stale))
        result["full_resync"] = {
            "ensure_jump_rules_seconds": round(ensure_seconds, 3), "iptables_save_seconds": round(save_seconds, 3),
            "restore_seconds": resync_restore, "stale_chains_deleted": len(stale),
            "total_seconds": (round(ensure_seconds + save_seconds + resync_restore, 3)
                              if resync_restore is not None else None),
            **({"timed_out_after": timeout} if resync_restore is None else {})}
        return result
    finally:
        delete(netns)


if __name__ == "__main__":  # a look at the layout: python -m bench.kubeproxy [services [backends]]
    counts = [int(a) for a in sys.argv[1:3]]
    sys.stdout.write(kube_proxy_rules(counts[0] if counts else 3, counts[1] if len(counts) > 1 else 2))
