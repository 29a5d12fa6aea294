"""bench.policy's BPF half: what a packet costs the policy datapath at each policy size, by BPF_PROG_RUN.

One node's worth of bpf_lxc instances sharing one set of pins (with the agent's map sizes): the
client pod and one server pod per size, every server at once. Each server's map state is what the
agent computes for it: the policy objects bench.policy applies in the lab, parsed, their CIDR peers
given CIDR identities (`CidrIdentities`) and ipcache entries, resolved for the server's labels and
compressed by `compute_map_state`, installed by `PolicyMaps` (the agent's code, minus the agent).
No device, no scheduler, no other process in the way: the figure is the program's own cost.

Two paths, the real programs each:
- `pod-to-pod`: the client's `cil_from_container` on a packet to server N (the path the lab half
  measures: conntrack, the client's egress and server N's ingress policy, delivery to the peer);
- `from-outside`: server N's `cil_to_container` on a packet from the first CIDR peer to TCP 1000
  (what the rule with N peers allows; ipcache longest-prefix match, conntrack, ingress policy).

For each, per size:
- `established`: a packet of a connection conntrack knows, BPF_PROG_RUN with `repeat` so the
  clock's overhead is shared out (the pod-to-pod packet leaves with TTL 255 - repeat: the program
  lowers the TTL of the packet it is run on again and again, and at 1 it would take the drop path);
- `established_single` and `new`: one run per call, so that the two compare like with like; `new`
  is a SYN of a connection nobody has seen (policy lookups, policy-verdict event, conntrack entry
  created): every SYN has its own source port, conntrack is emptied after each batch, and the
  batch must have created one entry per SYN.

Every size and path is measured in the same rounds, interleaved call by call (the order of sizes
rotating from round to round), so that what else the 2-core machine does at a moment falls on
every size alike; a ratio is the median of per-round ratios, each round's figure the median of
its calls.
Each measured packet's verdict is checked (delivered), and at N > 0 a packet the policy does
not allow must be dropped (the policy is in force).
"""

from __future__ import annotations

import ipaddress
import struct
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median, quantiles
from typing import Any

from cilia.bpf import BpfObject, RingBufferReader, ensure_bpffs, remove_pins
from cilia.datapath import DatapathOptions, EndpointConfig, default_bpf_dir
from cilia.identity.allocator import LocalIdentityAllocator
from cilia.identity.cidr import CidrIdentities, cidr_labels
from cilia.identity.labels import LabelSet
from cilia.maps import ct, ipcache
from cilia.maps import lb as lbm
from cilia.maps import policy as policy_maps
from cilia.maps.endpoints import EndpointInfo, EndpointsMap
from cilia.maps.ipcache import IpcacheMap
from cilia.policy.kinds import parse_policy, policy_ref
from cilia.policy.mapstate import PeerIndex, compute_map_state
from cilia.policy.repository import PolicyRepository
from cilia.policy.resolve import resolve_endpoint
from cilia.policy.rules import CidrPeer, Direction, IdentityView
from cilia.testing.packets import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, csum, tcp_packet

NAMESPACE = "default"
CLIENT_IP = "10.200.1.2"
ROUTER_IP = "10.200.1.1"
REPEAT = 250  # runs per established call: below the 255 hops a TTL allows
ESTABLISHED_CALLS = 100
SINGLE_CALLS = 1000  # established_single and new: calls per size and round
FIRST_PORT = 1024  # source ports of the SYNs count up from here, one per SYN, never reused
PATHS = ("pod-to-pod", "from-outside")
METRICS = ("established_ns", "established_single_ns", "new_ns")


def with_ttl(packet: bytes, ttl: int) -> bytes:
    """An Ethernet + IPv4 packet with its TTL (and the header checksum) changed."""
    header = bytearray(packet[14:34])
    header[8] = ttl
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", csum(bytes(header)))
    return packet[:14] + bytes(header) + packet[34:]


@dataclass(frozen=True)
class Pod:
    """One endpoint of the node: its program instance, addresses and identity."""

    name: str
    endpoint_id: int
    ip: str
    identity: int
    labels: LabelSet
    obj: BpfObject

    @property
    def pod_mac(self) -> str:
        return pod_mac(self.endpoint_id)

    @property
    def lxc_mac(self) -> str:
        return lxc_mac(self.endpoint_id)


def pod_mac(endpoint_id: int) -> str:
    return f"02:00:00:00:{endpoint_id:02x}:02"


def lxc_mac(endpoint_id: int) -> str:
    return f"02:00:00:00:{endpoint_id:02x}:01"


class PolicyNode:
    """The client and one server per size, sharing pinned maps, each server under its own policy."""

    def __init__(self, pins: Path, client_labels: dict[str, str],
                 servers: dict[int, tuple[dict[str, str], dict[str, Any] | None]]) -> None:
        """`servers`: size -> (the server pod's labels, the policy object that selects it, or None)."""
        self.pins = pins
        self._objects: list[BpfObject] = []
        self._state = tempfile.TemporaryDirectory(prefix="cilia-bench-policy-")
        options = DatapathOptions()  # the agent's map sizes: hash tables as big as a node's
        self._sizes = {ct.TCP_NAME: options.ct_tcp_max, ct.ANY_NAME: options.ct_any_max,
                       **dict.fromkeys(lbm.SIZED_BY_MAP_MAX, options.lb_map_max)}
        self._value_sizes = {lbm.MAGLEV_NAME: 4 * options.maglev_size}
        self._aggregation = (options.aggregation, options.aggregation_interval)
        self.events = 0
        try:
            self._build(client_labels, servers)
        except BaseException:
            self.close()
            raise

    def _build(self, client_labels: dict[str, str],
               servers: dict[int, tuple[dict[str, str], dict[str, Any] | None]]) -> None:
        identities = LocalIdentityAllocator(Path(self._state.name) / "identities.json")
        labels = {"client": LabelSet.from_k8s(client_labels, NAMESPACE)}
        labels |= {f"server-{size}": LabelSet.from_k8s(pod_labels, NAMESPACE)
                   for size, (pod_labels, _) in servers.items()}
        ids = {name: identities.allocate(label_set).id for name, label_set in labels.items()}
        self.client = self._pod("client", 1, CLIENT_IP, ids["client"], labels["client"])
        self.servers = {size: self._pod(f"server-{size}", 2 + k, f"10.200.1.{10 + k}", ids[f"server-{size}"],
                                        labels[f"server-{size}"]) for k, size in enumerate(servers)}
        maps = self.client.obj
        self.ct_table = maps.map(ct.TCP_NAME)
        self.reader = RingBufferReader(maps.map("cilia_events_v1"), self._count)
        endpoints = EndpointsMap(maps.map("cilia_endpoints_v1"))
        cache = IpcacheMap(maps.map(ipcache.NAME))
        for pod in (self.client, *self.servers.values()):
            info = EndpointInfo(ifindex=pod.endpoint_id * 2, endpoint_id=pod.endpoint_id, mac=pod.pod_mac,
                                lxc_mac=pod.lxc_mac, identity=pod.identity)
            endpoints.upsert(ipaddress.IPv4Address(pod.ip), info)
            cache.upsert(ipaddress.ip_network(f"{pod.ip}/32"), pod.identity)
        # as the agent's policy regeneration does it: CIDR identities for every prefix a rule names,
        # one peer index over all identities, each endpoint resolved and compressed, policy installed
        # before the ipcache gains the CIDR identities
        repository = PolicyRepository()
        for _, obj in servers.values():
            if obj is not None:
                repository.replace(policy_ref(obj), parse_policy(obj))
        rules = repository.rules()
        prefixes = {p for r in rules for d in Direction for e in r.entries(d) for peer in e.peers
                    if isinstance(peer, CidrPeer) for p in (peer.network, *peer.excepts)}
        cidrs, _ = CidrIdentities().sync(prefixes)
        universe = [IdentityView(i.id, i.labels) for i in identities.all()]
        universe += [IdentityView(n, cidr_labels(p), p) for p, n in cidrs.items()]
        index = PeerIndex(universe)
        policy = policy_maps.PolicyMaps(*(maps.map(name) for name in policy_maps.NAMES))
        policy.scan()
        self.map_entries: dict[int, int] = {}  # size -> entries of that server's map state
        for size, pod in [(-1, self.client), *self.servers.items()]:
            state = compute_map_state(resolve_endpoint(rules, pod.labels, allow_host_ingress=True), index)
            policy.install(pod.endpoint_id, state)
            if pod is not self.client:
                self.map_entries[size] = state.size()
        for prefix, number in cidrs.items():
            cache.upsert(prefix, number)
        self.cidr_identities = len(cidrs)

    def _pod(self, name: str, endpoint_id: int, ip: str, identity: int, labels: LabelSet) -> Pod:
        config = EndpointConfig(
            endpoint_id=endpoint_id, identity=identity, lxc_ifindex=endpoint_id * 2, lxc_mac=lxc_mac(endpoint_id),
            pod_mac=pod_mac(endpoint_id), pod_ipv4=ipaddress.IPv4Address(ip), pod_ipv6=None,
            router_ipv4=ipaddress.IPv4Address(ROUTER_IP), router_ipv6=None,
            aggregation=self._aggregation[0], aggregation_interval=self._aggregation[1])
        obj = BpfObject.open(default_bpf_dir() / "bpf_lxc.o", pin_root=self.pins, max_entries=self._sizes,
                             value_sizes=self._value_sizes, rodata={"CONFIG": config.pack()})
        self._objects.append(obj)
        return Pod(name, endpoint_id, ip, identity, labels, obj)

    def _count(self, _record: bytes) -> None:
        self.events += 1

    def drain(self) -> int:
        """Read (and so free) the ring buffer, as the agent would; how many records there were."""
        before = self.events
        self.reader.poll(0)
        return self.events - before

    def clear_ct(self) -> None:
        for key in list(self.ct_table.keys()):
            self.ct_table.delete(key)

    def close(self) -> None:
        if hasattr(self, "reader"):
            self.reader.close()
        for obj in self._objects:
            obj.close()
        self._objects.clear()
        self._state.cleanup()


class BenchError(Exception):
    """The BPF half could not measure as intended."""


@dataclass
class PathUnderTest:
    """One program and the packets it is measured on, for one server (one size)."""

    program: str
    pod: Pod
    src: str
    dst: str
    dport: int
    expected: int  # the verdict of a delivered packet
    ttl: int  # of the established packet: high enough for REPEAT runs on the same packet

    def packet(self, sport: int, flags: int, ttl: int | None = None) -> bytes:
        return with_ttl(tcp_packet(self.src, self.dst, sport, self.dport, flags=flags), ttl or self.ttl)

    def run(self, packet: bytes, repeat: int = 1) -> tuple[int, int]:
        result = self.pod.obj.program(self.program).test_run(packet, repeat=repeat)
        return result.retval, result.duration_ns


def paths(node: PolicyNode, size: int, peer: str) -> dict[str, PathUnderTest]:
    server = node.servers[size]
    return {"pod-to-pod": PathUnderTest("cil_from_container", node.client, CLIENT_IP, server.ip, 5201,
                                        TC_ACT_REDIRECT, 255),
            "from-outside": PathUnderTest("cil_to_container", server, peer, server.ip, 1000, TC_ACT_OK, 64)}


def check_in_force(node: PolicyNode, size: int, peer: str, closed_port: int) -> dict[str, int]:
    """The verdict of a SYN the policy does not allow, on each path: dropped at N > 0, delivered at 0."""
    verdicts = {}
    for name, path in paths(node, size, peer).items():
        path.dport = closed_port if name == "pod-to-pod" else 5201  # CIDR peers get TCP 1000 only
        verdicts[name], _ = path.run(path.packet(FIRST_PORT - 1, 0x02))
        expected = TC_ACT_SHOT if size else path.expected
        if verdicts[name] != expected:
            raise BenchError(f"BPF half, N={size}, {name}: a SYN to TCP {path.dport} got verdict {verdicts[name]}, "
                             f"expected {expected}: the policy is not installed as intended")
    node.clear_ct()
    node.drain()
    return verdicts


class Ports:
    """Source ports, one per SYN, never reused within a run (per path and size)."""

    def __init__(self) -> None:
        self._next: dict[tuple[str, int], int] = {}

    def take(self, key: tuple[str, int]) -> int:
        port = self._next.get(key, FIRST_PORT)
        if port > 65535:
            raise BenchError(f"{key}: out of source ports (fewer --bpf-packets or rounds)")
        self._next[key] = port + 1
        return port


Sample = dict[int, dict[str, dict[str, float]]]  # size -> path -> metric -> ns


def measure_round(node: PolicyNode, order: list[tuple[int, str, PathUnderTest]], ports: Ports,
                  single_calls: int, established_calls: int) -> Sample:
    """Every (size, path) of `order` interleaved call by call, so that whatever else the machine does
    at a moment falls on every size alike; the median of each one's calls."""
    durations: dict[tuple[int, str], dict[str, list[int]]] = {(size, name): {m: [] for m in METRICS}
                                                              for size, name, _ in order}

    def run_all(metric: str, calls: int, packet_of: Callable[[int, str, PathUnderTest], bytes],
                repeat: int = 1) -> None:
        for call in range(calls):
            for size, name, path in order:
                verdict, duration = path.run(packet_of(size, name, path), repeat)
                if verdict != path.expected:
                    raise BenchError(f"BPF half, N={size}, {name}, {metric}: verdict {verdict}, "
                                     f"expected {path.expected}")
                durations[size, name][metric].append(duration)
            if call % 100 == 99:
                node.drain()  # as the agent would: a full ring buffer makes sending an event cheaper
        node.drain()

    established = {}
    for size, name, path in order:  # the connections the established packets belong to
        sport = ports.take((name, size))
        if path.run(path.packet(sport, 0x02))[0] != path.expected:
            raise BenchError(f"BPF half, N={size}, {name}: the SYN that opens the measured connection was dropped")
        established[size, name] = path.packet(sport, 0x18)  # PSH|ACK
    run_all("established_ns", established_calls, lambda size, name, _: established[size, name], REPEAT)
    run_all("established_single_ns", single_calls, lambda size, name, _: established[size, name])
    entries = len(list(node.ct_table.keys()))
    run_all("new_ns", single_calls, lambda size, name, path: path.packet(ports.take((name, size)), 0x02))
    created = len(list(node.ct_table.keys())) - entries
    if created != single_calls * len(order):
        raise BenchError(f"BPF half: {single_calls * len(order)} SYNs created {created} conntrack entries: "
                         "not every SYN was a new connection")
    node.clear_ct()
    sample: Sample = {}
    for (size, name), by_metric in durations.items():
        sample.setdefault(size, {})[name] = {m: float(median(values)) for m, values in by_metric.items()}
    return sample




def measure(client_labels: dict[str, str], servers: dict[int, tuple[dict[str, str], dict[str, Any] | None]],
            peer: str, closed_port: int, rounds: int, single_calls: int = SINGLE_CALLS,
            established_calls: int = ESTABLISHED_CALLS) -> dict[str, Any]:
    """Every size at once on one node, `rounds` rounds in rotating order; ns per packet and ratios to N=0."""
    if (single_calls + 1) * rounds + 1 > 65535 - FIRST_PORT:
        raise BenchError(f"{rounds} rounds of {single_calls} SYNs need more source ports than there are")
    ensure_bpffs()
    pins = Path(f"/sys/fs/bpf/cilia-bench-policy-{uuid.uuid4().hex[:8]}")
    try:
        node = PolicyNode(pins, client_labels, servers)
        try:
            sizes = list(servers)
            in_force = {str(size): check_in_force(node, size, peer, closed_port) for size in sizes}
            ports = Ports()
            samples: list[Sample] = []
            for index in range(rounds):
                turn = index % len(sizes)
                order = [(size, name, path) for size in sizes[turn:] + sizes[:turn]
                         for name, path in paths(node, size, peer).items()]
                sample = measure_round(node, order, ports, single_calls, established_calls)
                samples.append(sample)
                print(f"BPF round {index + 1}/{rounds}: " + "; ".join(
                    f"N={size} " + ", ".join(f"{name} {r['established_ns']:.0f}/{r['new_ns']:.0f} ns"
                                             for name, r in sample[size].items()) for size in sizes), flush=True)
            return summarize(sizes, samples, node, in_force, rounds, single_calls, established_calls)
        finally:
            node.close()
    finally:
        remove_pins(pins)


def ratio_stats(values: list[float]) -> dict[str, float]:
    """Median, quartiles and range of per-round ratios."""
    q1, _, q3 = quantiles(values, n=4, method="inclusive") if len(values) > 1 else (values[0],) * 3
    return {"median": round(median(values), 3), "q1": round(q1, 3), "q3": round(q3, 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def summarize(sizes: list[int], samples: list[Sample], node: PolicyNode,
              in_force: dict[str, dict[str, int]], rounds: int, single_calls: int,
              established_calls: int) -> dict[str, Any]:
    figures: dict[str, dict[str, dict[str, float]]] = {}
    ratios: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    base = sizes[0]
    for path in PATHS:
        figures[path] = {}
        for size in sizes:
            row = {metric: round(median(s[size][path][metric] for s in samples), 1) for metric in METRICS}
            row["new_minus_established_ns"] = round(median(
                s[size][path]["new_ns"] - s[size][path]["established_single_ns"] for s in samples), 1)
            figures[path][str(size)] = row
        pairs = [(size, base) for size in sizes if size != base]
        if len(sizes) > 2:  # the size alone: the largest against the smallest that has a policy
            pairs.append((sizes[-1], sizes[1]))
        ratios[path] = {f"{a}/{b}": {metric: ratio_stats([s[a][path][metric] / s[b][path][metric] for s in samples])
                                     for metric in METRICS} for a, b in pairs}
    return {
        "method": {"rounds": rounds, "established": f"median of {established_calls} calls of {REPEAT} runs each",
                   "established_single_and_new": f"median of {single_calls} calls of one run each",
                   "aggregation": "medium (the agent's default)"},
        "map_entries": {str(size): n for size, n in node.map_entries.items()},
        "cidr_identities": node.cidr_identities,
        "closed_port_verdicts": in_force,
        "figures": figures,
        "ratios": ratios,
        "rounds": [{str(size): r for size, r in s.items()} for s in samples],
    }
