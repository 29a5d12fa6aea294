"""The agent's configuration: command-line flags parsed into one frozen value."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from cilia.agent import observability
from cilia.cluster.model import RoutingMode
from cilia.kvstore.tls import KvTls, KvTlsError, load_etcd_config
from cilia.lb.maglev import DEFAULT_SIZE as MAGLEV_DEFAULT_SIZE
from cilia.lb.maglev import MAGLEV_SIZES
from cilia.metrics.server import parse_address
from cilia.paths import NodePaths


class MonitorAggregation(StrEnum):
    """How many trace events an established flow emits (Cilium's monitor aggregation)."""

    NONE = "none"  # every packet: for debugging only
    MEDIUM = "medium"  # new connections, TCP flag changes, and once per interval


@dataclass(frozen=True)
class AgentConfig:
    node: str
    ipv4_pod_cidr: ipaddress.IPv4Network | None
    ipv6_pod_cidr: ipaddress.IPv6Network | None
    underlay_device: str
    bpf_dir: Path | None
    monitor_aggregation: MonitorAggregation
    monitor_interval_seconds: int
    flow_buffer: int
    ct_gc_interval_seconds: float
    ct_tcp_max: int
    ct_any_max: int
    masquerade: bool
    log_level: str
    policy_enforcement: str = "default"
    policy_audit_mode: bool = False
    allow_localhost: str = "auto"
    policy_map_max_entries: int = 65536
    policy_regeneration: str = "queue"
    regeneration_workers: int = 2
    cgroup_root: Path | None = None
    service_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    lb_map_max: int = 65536
    maglev_table_size: int = MAGLEV_DEFAULT_SIZE
    maglev_hash_seed: int = 0
    hubble: bool = True
    hubble_listen_address: str | None = None
    hubble_follow_cpu_budget: float = 0.0  # of one core per `follow` client; 0: no limit
    hubble_server_impl: str = "h2"  # cilia's own gRPC over HTTP/2, or "grpcio" (cilia.hubble.h2server)
    hubble_tls_cert_file: Path | None = None
    hubble_tls_key_file: Path | None = None
    hubble_tls_client_ca_files: tuple[Path, ...] = ()
    prometheus_serve_addr: str | None = None  # host:port of /metrics; None = not served
    # ----- the cluster (docs/cluster.md) -----
    kvstore: str = "local"  # local: the embedded SQLite store, one node; etcd: the cluster's etcd
    kvstore_endpoints: tuple[str, ...] = ()  # etcd client URLs, e.g. http://192.0.2.201:2379
    kvstore_lease_ttl: int = 15  # seconds: a node that stops refreshing disappears after this
    kvstore_tls: KvTls | None = None  # CA and client certificate for https:// members
    routing_mode: RoutingMode = RoutingMode.NATIVE
    tunnel_port: int = 8472  # VXLAN UDP port (Cilium's default)
    native_routing_cidrs: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # not masqueraded
    cluster_pool_ipv4_cidr: ipaddress.IPv4Network | None = None
    cluster_pool_ipv4_mask_size: int = 24
    cluster_pool_ipv6_cidr: ipaddress.IPv6Network | None = None
    cluster_pool_ipv6_mask_size: int = 64
    # Hubble flow metrics, flow export (cilia.agent.observability)
    observability: observability.ObservabilityConfig = field(default_factory=observability.ObservabilityConfig)
    cleanup: bool = False  # --cleanup: remove the node networking's rules and router addresses, and exit

    @property
    def paths(self) -> NodePaths:
        return NodePaths(self.node)


def _ipv4_network(text: str) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        # argparse prefixes the flag's own name (the pod CIDR or the cluster pool)
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def _ipv6_network(text: str) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(text, strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cilia-agent",
        description="cilia node agent: runs in the node's network namespace and owns its datapath.",
    )
    parser.add_argument("--node", default="default", help="node name (keys the socket, state and pins)")
    parser.add_argument("--ipv4-pod-cidr", type=_ipv4_network, default=None)
    parser.add_argument("--ipv6-pod-cidr", type=_ipv6_network, default=None)
    parser.add_argument("--underlay-device", default="eth0", help="device pod traffic leaves the node by")
    parser.add_argument("--cleanup", action="store_true",
                        help="remove what the agent set up in this network namespace outside the BPF pins (its "
                             "nat rules: masquerade, native-routing exclusions, service SNAT; the router "
                             "addresses of the pod CIDRs given) and exit; a stopping agent leaves them, since "
                             "the datapath keeps forwarding while it is away")
    parser.add_argument("--bpf-dir", type=Path, default=None, help="directory with the compiled BPF objects")
    parser.add_argument(
        "--monitor-aggregation",
        type=MonitorAggregation,
        choices=list(MonitorAggregation),
        default=MonitorAggregation.MEDIUM,
    )
    parser.add_argument("--monitor-interval", type=int, default=5, dest="monitor_interval_seconds")
    parser.add_argument("--flow-buffer", type=int, default=4096, help="recent flows kept in memory")
    parser.add_argument("--ct-gc-interval", type=float, default=30.0, dest="ct_gc_interval_seconds")
    parser.add_argument("--ct-tcp-max", type=int, default=1 << 20)
    parser.add_argument("--ct-any-max", type=int, default=1 << 18)
    parser.add_argument("--no-masquerade", action="store_false", dest="masquerade")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--enable-policy", default="default", choices=["default", "always", "never"],
                        dest="policy_enforcement", help="policy enforcement mode (Cilium's --enable-policy)")
    parser.add_argument("--policy-audit-mode", action="store_true",
                        help="log would-be policy drops as AUDIT flows and let the traffic through")
    parser.add_argument("--allow-localhost", default="auto", choices=["auto", "always", "policy"],
                        help="the node may reach its pods regardless of ingress policy (auto: unless "
                             "enforcement is 'always')")
    parser.add_argument("--policy-map-max-entries", type=int, default=65536,
                        help="policy map entries one endpoint may use; beyond it the endpoint fails closed")
    parser.add_argument("--policy-regeneration", default="queue", choices=["queue", "sync"],
                        help="queue: a change regenerates only the endpoints it can affect, in worker threads; "
                             "sync: every change regenerates every endpoint in the API thread (the old way)")
    parser.add_argument("--regeneration-workers", type=_positive, default=2,
                        help="threads regenerating endpoint policies (queue mode)")
    parser.add_argument("--cgroup-root", type=Path, default=None,
                        help="cgroup v2 directory whose processes get socket-level service load balancing "
                             "(a cgroup of this node's own; never the root cgroup). Unset: per-packet only")
    parser.add_argument("--service-cidr", action="append", default=None, dest="service_cidrs",
                        help="range ClusterIPs are allocated from for Services that name none "
                             "(repeatable; default 10.96.0.0/12)")
    parser.add_argument("--bpf-lb-map-max", type=int, default=65536, dest="lb_map_max",
                        help="entries of the service, backend, rev-NAT, affinity and Maglev maps")
    parser.add_argument("--bpf-lb-maglev-table-size", type=_maglev_size, default=MAGLEV_DEFAULT_SIZE,
                        dest="maglev_table_size",
                        help="Maglev table size M per external frontend (a prime; M > 100 x backends)")
    parser.add_argument("--bpf-lb-maglev-hash-seed", type=int, default=0, dest="maglev_hash_seed")
    parser.add_argument("--disable-hubble", action="store_false", dest="hubble",
                        help="do not serve Hubble's Observer API (served by default on <run dir>/hubble.sock)")
    parser.add_argument("--hubble-listen-address", default=None,
                        help="also serve it on this TCP address, e.g. :4244 or 127.0.0.1:4244 (plaintext "
                             "unless a TLS certificate is given)")
    parser.add_argument("--hubble-follow-cpu-budget", type=_fraction, default=0.0, metavar="FRACTION",
                        help="at most this share of one core for each GetFlows follower (e.g. 0.05); flows "
                             "beyond it are reported to the client as lost; 0 (default): no limit")
    parser.add_argument("--hubble-server-impl", choices=("h2", "grpcio"), default="h2",
                        help="the gRPC server of the Hubble API: cilia's own over HTTP/2 (h2, default: many "
                             "flows per DATA frame) or grpcio's (one message at a time)")
    parser.add_argument("--hubble-tls-cert-file", type=Path, default=None)
    parser.add_argument("--hubble-tls-key-file", type=Path, default=None)
    parser.add_argument("--hubble-tls-client-ca-files", type=Path, action="append", default=None,
                        help="CA certificates client certificates must be signed by (mutual TLS; repeatable)")
    parser.add_argument("--prometheus-serve-addr", type=_serve_addr, default=None,
                        help="serve Prometheus metrics on this address, e.g. :9962 or 127.0.0.1:9962 "
                             "(default: not served)")
    observability.add_arguments(parser)
    cluster = parser.add_argument_group("cluster", "several nodes sharing state in etcd (docs/cluster.md)")
    cluster.add_argument("--kvstore", default="local", choices=["local", "etcd"],
                         help="local: embedded store, one node (default); etcd: the cluster's etcd")
    cluster.add_argument("--kvstore-endpoints", type=_endpoints, default=(),
                         help="comma-separated etcd client URLs (with --kvstore etcd), or unix:/path:PORT targets")
    cluster.add_argument("--kvstore-tls-ca", type=Path, default=None, metavar="FILE",
                         help="CA the etcd members' certificates must be signed by (TLS towards https:// "
                              "endpoints; Cilium's trusted-ca-file)")
    cluster.add_argument("--kvstore-tls-cert", type=Path, default=None, metavar="FILE",
                         help="client certificate for etcd's client-cert-auth (Cilium's cert-file)")
    cluster.add_argument("--kvstore-tls-key", type=Path, default=None, metavar="FILE",
                         help="the client certificate's key (Cilium's key-file)")
    cluster.add_argument("--kvstore-opt", action="append", default=None, metavar="KEY=VALUE",
                         help="etcd.config=FILE: Cilium's etcd config file (YAML: endpoints, trusted-ca-file, "
                              "cert-file, key-file); the flags above win over it")
    cluster.add_argument("--kvstore-lease-ttl", type=_positive, default=15,
                         help="seconds before a node that stopped refreshing its lease disappears")
    cluster.add_argument("--routing-mode", type=RoutingMode, choices=list(RoutingMode), default=RoutingMode.NATIVE,
                         help="native: pod CIDRs routed over the underlay; tunnel: VXLAN with the identity in the VNI")
    cluster.add_argument("--tunnel-port", type=int, default=8472, help="VXLAN UDP port")
    cluster.add_argument("--ipv4-native-routing-cidr", "--ipv6-native-routing-cidr", action="append",
                         type=_service_cidr, default=None, dest="native_routing_cidrs",
                         help="destinations reached without masquerading (the cluster's pod CIDRs; repeatable)")
    cluster.add_argument("--cluster-pool-ipv4-cidr", type=_ipv4_network, default=None,
                         help="claim this node's IPv4 pod CIDR from this cluster pool (instead of --ipv4-pod-cidr)")
    cluster.add_argument("--cluster-pool-ipv4-mask-size", "--cluster-pool-mask-size", type=int, default=24,
                         dest="cluster_pool_ipv4_mask_size")
    cluster.add_argument("--cluster-pool-ipv6-cidr", type=_ipv6_network, default=None)
    cluster.add_argument("--cluster-pool-ipv6-mask-size", type=int, default=64)
    return parser


def _endpoints(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    for url in urls:
        # a unix target (unix:/run/cilia/etcd/<member>/etcd.sock:PORT) reaches a member from any
        # netns without a route: the tests' agents use it
        unix = url.startswith("unix:/") and url.rpartition(":")[2].isdigit()
        if not unix and (not url.startswith(("http://", "https://")) or url.count(":") < 2):
            raise argparse.ArgumentTypeError(f"--kvstore-endpoints {url!r}: must be a URL like http://HOST:2379 "
                                             "(or a unix target unix:/path/etcd.sock:PORT)")
    return urls


def _kvstore_connection(args: argparse.Namespace) -> tuple[tuple[str, ...], KvTls | None]:
    """The endpoints and TLS files from the flags and Cilium's etcd config file (flags win);
    exits with the parser's error naming the flag, file or key that is wrong."""
    options: dict[str, str] = {}
    for raw in args.kvstore_opt or []:
        key, sep, value = raw.partition("=")
        if not sep or key != "etcd.config" or not value:
            build_parser().error(f"--kvstore-opt {raw!r}: the only option is etcd.config=<file>")
        options[key] = value
    endpoints: tuple[str, ...] = args.kvstore_endpoints
    ca, cert, key = args.kvstore_tls_ca, args.kvstore_tls_cert, args.kvstore_tls_key
    try:
        if "etcd.config" in options:
            loaded = load_etcd_config(Path(options["etcd.config"]))
            if not endpoints and loaded.endpoints:
                try:
                    endpoints = _endpoints(",".join(loaded.endpoints))
                except argparse.ArgumentTypeError as exc:
                    build_parser().error(f"--kvstore-opt etcd.config={options['etcd.config']}: {exc}")
            if loaded.tls is not None:
                ca, cert, key = ca or loaded.tls.ca, cert or loaded.tls.cert, key or loaded.tls.key
        tls = KvTls(ca, cert, key) if (ca or cert or key) else None
        if tls is not None:
            tls.credentials()  # the files are readable PEM: a wrong path fails here, not at the first call
    except KvTlsError as exc:
        build_parser().error(str(exc))
    if tls is not None and args.kvstore != "etcd":
        build_parser().error("--kvstore-tls-* / --kvstore-opt need --kvstore etcd")
    return endpoints, tls


def _serve_addr(text: str) -> str | None:
    if not text:
        return None  # Cilium's default: empty means off
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--prometheus-serve-addr {exc}") from exc
    return text


def _fraction(text: str) -> float:
    """A share of one core, 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a share of one core, from 0 to 1")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _maglev_size(text: str) -> int:
    if not text.isdigit() or int(text) not in MAGLEV_SIZES:
        raise argparse.ArgumentTypeError(f"--bpf-lb-maglev-table-size {text!r}: must be one of "
                                         f"{', '.join(map(str, MAGLEV_SIZES))}")
    return int(text)


def _service_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def parse_config(argv: list[str] | None = None) -> AgentConfig:
    args = build_parser().parse_args(argv)
    pooled = args.cluster_pool_ipv4_cidr is not None or args.cluster_pool_ipv6_cidr is not None
    if args.ipv4_pod_cidr is None and args.ipv6_pod_cidr is None and not pooled and not args.cleanup:
        build_parser().error("at least one of --ipv4-pod-cidr and --ipv6-pod-cidr is required "
                             "(or --cluster-pool-ipv4-cidr / --cluster-pool-ipv6-cidr with --kvstore etcd)")
    if pooled and args.kvstore != "etcd":
        build_parser().error("--cluster-pool-* needs --kvstore etcd (the pool is claimed in etcd)")
    endpoints, tls = _kvstore_connection(args)
    if args.kvstore == "etcd" and not endpoints:
        build_parser().error("--kvstore etcd needs --kvstore-endpoints (or endpoints in --kvstore-opt etcd.config)")
    if (args.hubble_tls_cert_file is None) != (args.hubble_tls_key_file is None):
        build_parser().error("--hubble-tls-cert-file and --hubble-tls-key-file go together")
    return AgentConfig(
        node=args.node,
        ipv4_pod_cidr=args.ipv4_pod_cidr,
        ipv6_pod_cidr=args.ipv6_pod_cidr,
        underlay_device=args.underlay_device,
        bpf_dir=args.bpf_dir,
        monitor_aggregation=args.monitor_aggregation,
        monitor_interval_seconds=args.monitor_interval_seconds,
        flow_buffer=args.flow_buffer,
        ct_gc_interval_seconds=args.ct_gc_interval_seconds,
        ct_tcp_max=args.ct_tcp_max,
        ct_any_max=args.ct_any_max,
        masquerade=args.masquerade,
        log_level=args.log_level,
        policy_enforcement=args.policy_enforcement,
        policy_audit_mode=args.policy_audit_mode,
        allow_localhost=args.allow_localhost,
        policy_map_max_entries=args.policy_map_max_entries,
        policy_regeneration=args.policy_regeneration,
        regeneration_workers=args.regeneration_workers,
        cgroup_root=args.cgroup_root,
        service_cidrs=tuple(_service_cidr(c) for c in (args.service_cidrs or ["10.96.0.0/12"])),
        lb_map_max=args.lb_map_max,
        maglev_table_size=args.maglev_table_size,
        maglev_hash_seed=args.maglev_hash_seed,
        hubble=args.hubble,
        hubble_listen_address=args.hubble_listen_address,
        hubble_follow_cpu_budget=args.hubble_follow_cpu_budget,
        hubble_server_impl=args.hubble_server_impl,
        hubble_tls_cert_file=args.hubble_tls_cert_file,
        hubble_tls_key_file=args.hubble_tls_key_file,
        hubble_tls_client_ca_files=tuple(args.hubble_tls_client_ca_files or ()),
        prometheus_serve_addr=args.prometheus_serve_addr,
        kvstore=args.kvstore,
        kvstore_endpoints=endpoints,
        kvstore_tls=tls,
        kvstore_lease_ttl=args.kvstore_lease_ttl,
        routing_mode=args.routing_mode,
        tunnel_port=args.tunnel_port,
        native_routing_cidrs=tuple(args.native_routing_cidrs or ()),
        cluster_pool_ipv4_cidr=args.cluster_pool_ipv4_cidr,
        cluster_pool_ipv4_mask_size=args.cluster_pool_ipv4_mask_size,
        cluster_pool_ipv6_cidr=args.cluster_pool_ipv6_cidr,
        cluster_pool_ipv6_mask_size=args.cluster_pool_ipv6_mask_size,
        observability=observability.from_args(args, build_parser()),
        cleanup=args.cleanup,
    )
