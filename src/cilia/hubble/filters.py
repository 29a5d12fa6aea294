"""Hubble's flow filters on flow.Flow messages, with upstream's semantics.

A GetFlows request carries a whitelist and a blacklist of FlowFilters. Within one FlowFilter
every field that is set must match (AND); within one field one of the values must match; the
FlowFilters of a list are ORed. A flow is returned when it matches one whitelist filter (or the
whitelist is empty) and no blacklist filter. Each field behaves as Hubble's filter for it
(cilium pkg/hubble/filters): pod names are prefixes within a namespace ("default" when none is
given, any with "/name"), IPs exact or CIDR, node names patterns with `*`, labels Kubernetes
selectors, TCP flags "has all of one set", and so on. A filter that cannot be built (bad IP, port,
protocol, selector) raises FilterError, which the server answers with INVALID_ARGUMENT."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from urllib.parse import unquote, urlsplit

from cilia.hubble.labels import LabelArray, SelectorError, parse_selector
from cilia.hubble.pb import flow_pb2

Predicate = Callable[[flow_pb2.Flow], bool]

DEFAULT_CLUSTER = "default"  # Cilium's default cluster name: node-name patterns assume it
MESSAGE_TYPE_ACCESS_LOG = 129  # monitor API: L7 records
_L4_PROTOCOLS = ("icmp", "icmpv4", "icmpv6", "tcp", "udp", "sctp", "vrrp", "igmp")
_L7_PROTOCOLS = ("dns", "http", "kafka")
_FQDN = r"(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)"
_HTTP_CODE_FULL = re.compile(r"^[1-5][0-9]{2}$")
_HTTP_CODE_PREFIX = re.compile(r"^[1-5][0-9]?\+$")
_TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR", "NS")


class FilterError(ValueError):
    pass


class FlowFilters:
    """A request's whitelist and blacklist, compiled once."""

    def __init__(self, whitelist: Sequence[flow_pb2.FlowFilter], blacklist: Sequence[flow_pb2.FlowFilter]) -> None:
        self._whitelist = [compile_filter(f) for f in whitelist]
        self._blacklist = [compile_filter(f) for f in blacklist]

    @property
    def empty(self) -> bool:
        """No filter at all: every flow matches."""
        return not self._whitelist and not self._blacklist

    def matches(self, flow: flow_pb2.Flow) -> bool:
        if self._whitelist and not any(p(flow) for p in self._whitelist):
            return False
        return not any(p(flow) for p in self._blacklist)


def compile_filter(ff: flow_pb2.FlowFilter) -> Predicate:
    """One FlowFilter -> a predicate that is true when every field it sets matches."""
    checks: list[Predicate] = []
    add = checks.append
    if ff.uuid:
        uuids = set(ff.uuid)
        add(lambda f: f.uuid in uuids)
    if ff.event_type:
        add(_event_type(list(ff.event_type)))
    if ff.verdict:
        verdicts = set(ff.verdict)
        add(lambda f: f.verdict in verdicts)
    if ff.drop_reason_desc:
        reasons = set(ff.drop_reason_desc)
        add(lambda f: f.verdict == flow_pb2.DROPPED and f.drop_reason_desc in reasons)
    if ff.reply:
        add(_reply(list(ff.reply)))
    if ff.encrypted:
        encrypted = set(ff.encrypted)
        add(lambda f: f.IP.encrypted in encrypted)
    if ff.source_identity:
        identities = set(ff.source_identity)
        add(lambda f: f.HasField("source") and f.source.identity in identities)
    if ff.destination_identity:
        dst_identities = set(ff.destination_identity)
        add(lambda f: f.HasField("destination") and f.destination.identity in dst_identities)
    if ff.protocol:
        add(_protocol(list(ff.protocol)))
    if ff.source_ip:
        add(_ips(list(ff.source_ip), lambda f: f.IP.source))
    if ff.destination_ip:
        add(_ips(list(ff.destination_ip), lambda f: f.IP.destination))
    if ff.source_ip_xlated:
        add(_ips(list(ff.source_ip_xlated), lambda f: f.IP.source_xlated))
    if ff.source_pod:
        add(_names(list(ff.source_pod), lambda f: (f.source.namespace, f.source.pod_name)))
    if ff.destination_pod:
        add(_names(list(ff.destination_pod), lambda f: (f.destination.namespace, f.destination.pod_name)))
    if ff.source_workload:
        add(_workloads(list(ff.source_workload), lambda f: f.source))
    if ff.destination_workload:
        add(_workloads(list(ff.destination_workload), lambda f: f.destination))
    if ff.source_service:
        add(_names(list(ff.source_service), lambda f: (f.source_service.namespace, f.source_service.name)))
    if ff.destination_service:
        add(_names(list(ff.destination_service),
                   lambda f: (f.destination_service.namespace, f.destination_service.name)))
    if ff.source_fqdn:
        add(_fqdns(list(ff.source_fqdn), lambda f: f.source_names))
    if ff.destination_fqdn:
        add(_fqdns(list(ff.destination_fqdn), lambda f: f.destination_names))
    if ff.dns_query:
        add(_dns_queries(list(ff.dns_query)))
    if ff.source_label:
        add(_labels(list(ff.source_label), lambda f: f.source.labels))
    if ff.destination_label:
        add(_labels(list(ff.destination_label), lambda f: f.destination.labels))
    if ff.node_labels:
        add(_labels(list(ff.node_labels), lambda f: f.node_labels))
    if ff.source_port:
        add(_ports(list(ff.source_port), _source_port))
    if ff.destination_port:
        add(_ports(list(ff.destination_port), _destination_port))
    checks.extend(_http(ff))
    if ff.tcp_flags:
        add(_tcp_flags(list(ff.tcp_flags)))
    if ff.node_name:
        add(_node_names(list(ff.node_name)))
    if ff.source_cluster_name:
        add(_cluster_names(list(ff.source_cluster_name), lambda f: f.source.cluster_name))
    if ff.destination_cluster_name:
        add(_cluster_names(list(ff.destination_cluster_name), lambda f: f.destination.cluster_name))
    if ff.ip_version:
        versions = set(ff.ip_version)
        add(lambda f: f.IP.ipVersion in versions)
    if ff.trace_id:
        trace_ids = set(ff.trace_id)
        add(lambda f: f.trace_context.parent.trace_id in trace_ids)
    if ff.traffic_direction:
        directions = set(ff.traffic_direction)
        add(lambda f: f.traffic_direction in directions)
    if ff.experimental.cel_expression:
        raise FilterError("CEL expression filters are not supported by this server")
    if ff.interface:
        add(_interfaces(list(ff.interface)))
    if ff.ip_trace_id:
        ip_trace_ids = set(ff.ip_trace_id)
        add(lambda f: f.ip_trace_id.trace_id in ip_trace_ids)
    return lambda flow: all(check(flow) for check in checks)


def _event_type(types: list[flow_pb2.EventTypeFilter]) -> Predicate:
    def test(f: flow_pb2.Flow) -> bool:
        if not f.HasField("event_type"):
            return False
        for t in types:
            if t.type != 0 and t.type != f.event_type.type:
                continue
            if t.match_sub_type and t.sub_type != f.event_type.sub_type:
                continue
            return True
        return False

    return test


def _reply(values: list[bool]) -> Predicate:
    def test(f: flow_pb2.Flow) -> bool:
        # Hubble: a dropped flow whose direction is unknown counts as not a reply.
        if not f.HasField("is_reply"):
            return f.verdict == flow_pb2.DROPPED and False in values
        return f.is_reply.value in values

    return test


def _protocol(protocols: list[str]) -> Predicate:
    wanted = [p.lower() for p in protocols]
    for name, original in zip(wanted, protocols, strict=True):
        if name not in _L4_PROTOCOLS and name not in _L7_PROTOCOLS:
            raise FilterError(f'invalid protocol filter: unknown protocol: "{original}"')

    def test(f: flow_pb2.Flow) -> bool:
        l4 = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
        l7 = f.l7.WhichOneof("record") if f.HasField("l7") else None
        for name in wanted:
            if name == "icmp" and l4 in ("ICMPv4", "ICMPv6"):
                return True
            if l4 is not None and name == l4.lower():
                return True
            if l7 is not None and name == l7:
                return True
        return False

    return test


def _ips(values: list[str], get: Callable[[flow_pb2.Flow], str]) -> Predicate:
    addresses: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for value in values:
        try:
            if "/" in value:
                networks.append(_prefix(value))
            else:
                ipaddress.ip_address(value)
                addresses.add(value)
        except ValueError as exc:
            raise FilterError(f"invalid IP {value!r} in filter: {exc}") from exc

    def test(f: flow_pb2.Flow) -> bool:
        ip = get(f)
        if not ip:
            return False
        if ip in addresses:
            return True
        if networks:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return any(address in network for network in networks)
        return False

    return test


def _prefix(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Go's netip.ParsePrefix: `address/bits`, bits in decimal without a leading zero (no netmask
    form, no zone); host bits may be set (`10.0.0.1/8` is 10.0.0.0/8)."""
    address, _, bits = text.partition("/")
    if not bits or not bits.isascii() or not bits.isdigit() or (len(bits) > 1 and bits[0] == "0"):
        raise ValueError(f"bad bits after slash: {bits!r}")
    if "%" in address:
        raise ValueError("IPv6 zones cannot be present in a prefix")
    parsed = ipaddress.ip_address(address)
    if int(bits) > parsed.max_prefixlen:
        raise ValueError(f"prefix length out of range: {bits}")
    return ipaddress.ip_network(f"{address}/{bits}", strict=False)


def parse_namespaced_name(text: str) -> tuple[str, str]:
    """Hubble's "ns/name" parsing: "name" is in namespace default, "/name" in any, "ns/" all of ns."""
    parts = text.split("/")
    if len(parts) > 1:
        return parts[0], parts[1]
    return ("", "") if parts[0] == "" else ("default", parts[0])


def _names(values: list[str], get: Callable[[flow_pb2.Flow], tuple[str, str]]) -> Predicate:
    wanted = []
    for value in values:
        if value == "":
            raise FilterError("invalid filter, name must not be empty")
        wanted.append(parse_namespaced_name(value))

    def test(f: flow_pb2.Flow) -> bool:
        namespace, name = get(f)
        if not namespace and not name:
            return False
        return any((not prefix or name.startswith(prefix)) and (not ns or ns == namespace) for ns, prefix in wanted)

    return test


def _workloads(values: list[flow_pb2.Workload], get: Callable[[flow_pb2.Flow], flow_pb2.Endpoint]) -> Predicate:
    def test(f: flow_pb2.Flow) -> bool:
        return any((not w.name or w.name == have.name) and (not w.kind or w.kind == have.kind)
                   for have in get(f).workloads for w in values)

    return test


def _fqdn_pattern(pattern: str) -> str:
    pattern = pattern.strip().removesuffix(".").lower()
    if not pattern:
        raise FilterError("empty pattern")
    if pattern.endswith("."):
        raise FilterError("multiple trailing dots in pattern")
    out = []
    for char in pattern:
        if char == ".":
            out.append(r"\.")
        elif char == "*":
            out.append(r"[-.0-9a-z]*")
        elif char in "-_" or "0" <= char <= "9" or "a" <= char <= "z":
            out.append(char)
        else:
            raise FilterError(f"{char!r}: invalid rune in pattern")
    return "".join(out)


def _fqdns(patterns: list[str], get: Callable[[flow_pb2.Flow], Sequence[str]]) -> Predicate:
    regexp = re.compile(r"\A(?:" + "|".join(_fqdn_pattern(p) for p in patterns) + r")\Z")
    return lambda f: any(regexp.match(name) for name in get(f))


def _dns_queries(patterns: list[str]) -> Predicate:
    try:
        queries = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise FilterError(f"invalid DNS query filter: {exc}") from exc

    def test(f: flow_pb2.Flow) -> bool:
        if f.l7.WhichOneof("record") != "dns":
            return False
        return any(q.search(f.l7.dns.query) for q in queries)

    return test


def _labels(selectors: list[str], get: Callable[[flow_pb2.Flow], Sequence[str]]) -> Predicate:
    try:
        compiled = [parse_selector(s) for s in selectors]
    except SelectorError as exc:
        raise FilterError(f"invalid label filter: {exc}") from exc

    def test(f: flow_pb2.Flow) -> bool:
        labels = LabelArray(get(f))
        return any(selector(labels) for selector in compiled)

    return test


def _source_port(f: flow_pb2.Flow) -> int | None:
    which = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    return int(getattr(f.l4, which).source_port) if which in ("TCP", "UDP", "SCTP") else None


def _destination_port(f: flow_pb2.Flow) -> int | None:
    which = f.l4.WhichOneof("protocol") if f.HasField("l4") else None
    return int(getattr(f.l4, which).destination_port) if which in ("TCP", "UDP", "SCTP") else None


def _ports(values: list[str], get: Callable[[flow_pb2.Flow], int | None]) -> Predicate:
    ports = set()
    for value in values:
        if not value.isascii() or not value.isdigit() or int(value) > 65535:  # Go's ParseUint(p, 10, 16)
            raise FilterError(f"invalid port filter: invalid port {value!r}")
        ports.add(int(value))

    def test(f: flow_pb2.Flow) -> bool:
        port = get(f)
        return port is not None and port in ports

    return test


def _http(ff: flow_pb2.FlowFilter) -> list[Predicate]:
    """Hubble's HTTPFilter: each http field needs the event type filter (when one is set) to
    include l7 (129); a flow without an HTTP record (or without the field) never matches."""
    checks: list[Predicate] = []
    l7_compatible = not ff.event_type or any(t.type == MESSAGE_TYPE_ACCESS_LOG for t in ff.event_type)
    for present, what in ((ff.http_status_code, "http status code"), (ff.http_method, "http method"),
                          (ff.http_path, "http path"), (ff.http_url, "http url"), (ff.http_header, "http headers")):
        if present and not l7_compatible:
            raise FilterError(f"filtering by {what} requires the event type filter to only match 'l7' events")

    def http(f: flow_pb2.Flow) -> flow_pb2.HTTP | None:
        return f.l7.http if f.l7.WhichOneof("record") == "http" else None

    if ff.http_status_code:
        full, prefixes = set(), []
        for code in ff.http_status_code:
            if _HTTP_CODE_FULL.match(code):
                full.add(code)
            elif _HTTP_CODE_PREFIX.match(code):
                prefixes.append(code.removesuffix("+"))
            else:
                raise FilterError(f'invalid http status code filter: invalid status code prefix: "{code}"')

        def by_code(f: flow_pb2.Flow) -> bool:
            h = http(f)
            if h is None or h.code == 0:  # not a response
                return False
            text = f"{h.code:03d}"
            return text in full or any(text.startswith(p) for p in prefixes)

        checks.append(by_code)
    if ff.http_method:
        methods = [m.lower() for m in ff.http_method]  # strings.EqualFold
        checks.append(lambda f: (h := http(f)) is not None and bool(h.method) and h.method.lower() in methods)
    paths = _regexps("http path", list(ff.http_path))
    if paths:
        def by_path(f: flow_pb2.Flow) -> bool:
            h = http(f)
            if h is None or not h.url:
                return False
            path = _request_uri_path(h.url)
            return path is not None and any(p.search(path) for p in paths)

        checks.append(by_path)
    urls = _regexps("http url", list(ff.http_url))
    if urls:
        checks.append(lambda f: (h := http(f)) is not None and bool(h.url) and any(u.search(h.url) for u in urls))
    if ff.http_header:
        headers = {(h.key, h.value) for h in ff.http_header}  # name and value exactly, as upstream
        checks.append(lambda f: (h := http(f)) is not None and any((x.key, x.value) in headers for x in h.headers))
    return checks


def _regexps(what: str, patterns: list[str]) -> list[re.Pattern[str]]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise FilterError(f"invalid {what} filter: {pattern}: {exc}") from exc
    return out


_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _request_uri_path(url: str) -> str | None:
    """The decoded path of Go's url.ParseRequestURI (an absolute URL or an absolute path; None
    when it does not parse, which Hubble's path filter takes as no match)."""
    if not url.startswith("/"):
        scheme, sep, _rest = url.partition(":")
        if not sep or not scheme or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
            return None
    # a request path is taken as it is ("//a" is a path there, not an authority)
    path = url.partition("?")[0] if url.startswith("/") else urlsplit(url).path
    if _PERCENT.search(path):
        return None  # a bad %-escape: Go's parser fails
    return unquote(path)


def _tcp_flags(wanted: list[flow_pb2.TCPFlags]) -> Predicate:
    sets = [[name for name in _TCP_FLAG_NAMES if getattr(w, name)] for w in wanted]

    def test(f: flow_pb2.Flow) -> bool:
        if f.l4.WhichOneof("protocol") != "TCP" or not f.l4.TCP.HasField("flags"):
            return False
        flags = f.l4.TCP.flags
        return any(all(getattr(flags, name) for name in names) for names in sets)

    return test


def _node_pattern(pattern: str) -> str:
    if not pattern:
        raise FilterError("empty pattern")
    parts = pattern.split("/")
    if len(parts) > 2:
        raise FilterError("too many slashes in pattern")
    cluster, node = ("", parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return (_fqdn_pattern(cluster) if cluster else _FQDN) + "/" + (_fqdn_pattern(node) if node else _FQDN)


def _node_names(patterns: list[str]) -> Predicate:
    regexp = re.compile(r"\A(?:" + "|".join(_node_pattern(p) for p in patterns) + r")\Z")

    def test(f: flow_pb2.Flow) -> bool:
        name = f.node_name
        if not name:
            return False
        if "/" not in name:
            name = f"{DEFAULT_CLUSTER}/{name}"
        return regexp.match(name) is not None

    return test


def _cluster_names(names: list[str], get: Callable[[flow_pb2.Flow], str]) -> Predicate:
    if "" in names:
        raise FilterError("invalid filter, name must not be empty")
    wanted = set(names)
    return lambda f: get(f) in wanted


def _interfaces(wanted: list[flow_pb2.NetworkInterface]) -> Predicate:
    def test(f: flow_pb2.Flow) -> bool:
        if not f.HasField("interface"):
            return False
        return any((not w.index or w.index == f.interface.index) and (not w.name or w.name == f.interface.name)
                   for w in wanted)

    return test
