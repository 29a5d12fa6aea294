"""The wire format of the cluster's records in the kvstore: keys and JSON values of nodes
(`cilia/nodes/<name>`), ipcache entries (`cilia/ipcache/<ip>`) and pod CIDR claims
(`cilia/podcidrs/v4|v6/<a.b.c.d_len>`). docs/cluster.md documents the layout.

Decoding is strict and total: anything another node (or a person with etcdctl) wrote that is not
exactly a record raises `RecordError` naming the key and what is wrong, never another exception,
so the owners can log the key and skip it.
"""

from __future__ import annotations

import ipaddress
import json
import math
import sys
from typing import Any, TypeVar

from cilia.cluster.model import IpcacheRecord, Network, NodeRecord, RoutingMode

PREFIX = "cilia/"
NODES_PREFIX = PREFIX + "nodes/"
IPCACHE_PREFIX = PREFIX + "ipcache/"
PODCIDRS_PREFIX = PREFIX + "podcidrs/"
HEALTH_VALUES = ("ok", "degraded")
_MAX_NAME = 253  # a DNS name, like a Kubernetes node name


class RecordError(ValueError):
    """A key or value under cilia's prefix that is not a valid record (the message names the key)."""


# ----- keys -------------------------------------------------------------------------------------
def node_key(name: str) -> str:
    return NODES_PREFIX + name


def ipcache_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return IPCACHE_PREFIX + str(ip)


def podcidr_prefix(version: int) -> str:
    return f"{PODCIDRS_PREFIX}v{version}/"


def podcidr_key(cidr: Network) -> str:
    return podcidr_prefix(cidr.version) + f"{cidr.network_address}_{cidr.prefixlen}"


# ----- values -----------------------------------------------------------------------------------
def encode_node(record: NodeRecord) -> bytes:
    return _dumps({
        "name": record.name,
        "ipv4": str(record.ipv4) if record.ipv4 else None,
        "ipv6": str(record.ipv6) if record.ipv6 else None,
        "pod_cidrs": [str(c) for c in record.pod_cidrs],
        "routing_mode": record.routing_mode.value,
        "health": record.health,
        "health_reason": record.health_reason,
        "updated": record.updated,
    })


def decode_node(key: str, value: bytes) -> NodeRecord:
    name = _suffix(key, NODES_PREFIX)
    _check_name(key, name)
    doc = _loads(key, value)
    if doc.get("name") != name:
        raise RecordError(f"{key}: name {doc.get('name')!r} does not match the key")
    mode = _str(key, doc, "routing_mode")
    try:
        routing_mode = RoutingMode(mode)
    except ValueError:
        raise RecordError(f"{key}: routing_mode {mode!r} is not one of {', '.join(RoutingMode)}") from None
    health = _str(key, doc, "health", "ok")
    if health not in HEALTH_VALUES:
        raise RecordError(f"{key}: health {health!r} is not one of {', '.join(HEALTH_VALUES)}")
    cidrs = doc.get("pod_cidrs", [])
    if not isinstance(cidrs, list):
        raise RecordError(f"{key}: pod_cidrs must be a list")
    return NodeRecord(
        name=name,
        ipv4=_ipv4(key, doc, "ipv4"),
        ipv6=_ipv6(key, doc, "ipv6"),
        pod_cidrs=tuple(_network(key, "pod_cidrs", c) for c in cidrs),
        routing_mode=routing_mode,
        health=health,
        health_reason=_str(key, doc, "health_reason", ""),
        updated=_number(key, doc, "updated"),
    )


def encode_ipcache(record: IpcacheRecord) -> bytes:
    return _dumps({
        "ip": str(record.ip),
        "identity": record.identity,
        "node": record.node,
        "node_ipv4": str(record.node_ipv4) if record.node_ipv4 else None,
        "node_ipv6": str(record.node_ipv6) if record.node_ipv6 else None,
        "namespace": record.namespace,
        "pod": record.pod,
    })


def decode_ipcache(key: str, value: bytes) -> IpcacheRecord:
    text = _suffix(key, IPCACHE_PREFIX)
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise RecordError(f"{key}: {text!r} is not an IP address") from None
    doc = _loads(key, value)
    if doc.get("ip") != str(ip):
        raise RecordError(f"{key}: ip {doc.get('ip')!r} does not match the key")
    identity = doc.get("identity")
    if not isinstance(identity, int) or isinstance(identity, bool) or not 0 < identity < 2**32:
        raise RecordError(f"{key}: identity {identity!r} is not a number in 1..2^32-1")
    node = _str(key, doc, "node")
    _check_name(key, node)
    # a cluster holds one record per endpoint IP, a hundred or more per node: the node's name,
    # addresses and the namespace are shared objects, not one copy each
    return IpcacheRecord(
        ip=ip,
        identity=identity,
        node=sys.intern(node),
        node_ipv4=_shared(_ipv4(key, doc, "node_ipv4")),
        node_ipv6=_shared(_ipv6(key, doc, "node_ipv6")),
        namespace=sys.intern(_str(key, doc, "namespace", "")),
        pod=_str(key, doc, "pod", ""),
    )


def encode_claim(node: str) -> bytes:
    return _dumps({"node": node})


def decode_claim(key: str, value: bytes) -> tuple[Network, str]:
    """A pod CIDR claim: the CIDR (from the key) and the node holding it."""
    cidr = decode_claim_key(key)
    node = _str(key, _loads(key, value), "node")
    _check_name(key, node)
    return cidr, node


def decode_claim_key(key: str) -> Network:
    if not key.startswith(PODCIDRS_PREFIX):
        raise RecordError(f"{key}: not under {PODCIDRS_PREFIX}")
    family, _, text = key[len(PODCIDRS_PREFIX):].partition("/")
    address, sep, length = text.rpartition("_")
    if family not in ("v4", "v6") or not sep or not length.isdigit() or len(length) > 3:
        raise RecordError(f"{key}: not a claim key ({PODCIDRS_PREFIX}v4|v6/<address>_<length>)")
    try:
        cidr = ipaddress.ip_network(f"{address}/{int(length)}", strict=True)
    except ValueError as exc:
        raise RecordError(f"{key}: {exc}") from None
    if f"v{cidr.version}" != family:
        raise RecordError(f"{key}: an IPv{cidr.version} CIDR under {family}")
    return cidr


# ----- helpers ----------------------------------------------------------------------------------
_SHARED_MAX = 4096  # node underlay addresses: one per node; bounded against garbage values
_shared_addresses: dict[object, object] = {}
A = TypeVar("A", ipaddress.IPv4Address, ipaddress.IPv6Address)


def _shared(address: A | None) -> A | None:
    """One object per distinct address (equal addresses are interchangeable: immutable)."""
    if address is None:
        return None
    held = _shared_addresses.get(address)
    if held is not None and type(held) is type(address):
        return held  # the same type (narrowed by the check)
    if len(_shared_addresses) >= _SHARED_MAX:
        _shared_addresses.clear()
    _shared_addresses[address] = address
    return address


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _loads(key: str, value: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        raise RecordError(f"{key}: value is not JSON ({value[:40]!r})") from None
    except RecursionError:
        raise RecordError(f"{key}: value nests too deeply") from None
    if not isinstance(doc, dict):
        raise RecordError(f"{key}: value is not a JSON object")
    return doc


def _suffix(key: str, prefix: str) -> str:
    if not key.startswith(prefix) or len(key) == len(prefix):
        raise RecordError(f"{key}: not a key under {prefix}")
    return key[len(prefix):]


def _check_name(key: str, name: str) -> None:
    if not name or len(name) > _MAX_NAME or "/" in name or not name.isprintable() or name.strip() != name:
        raise RecordError(f"{key}: node name {name!r} is not a valid name")


def _str(key: str, doc: dict[str, Any], field: str, default: str | None = None) -> str:
    value = doc.get(field, default)
    if not isinstance(value, str):
        raise RecordError(f"{key}: {field} must be a string, not {type(value).__name__}")
    return value


def _number(key: str, doc: dict[str, Any], field: str) -> float:
    value = doc.get(field, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RecordError(f"{key}: {field} must be a finite number")
    return float(value)


def _address(key: str, doc: dict[str, Any], field: str,
             version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = doc.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError(f"{key}: {field} must be an IPv{version} address or null")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise RecordError(f"{key}: {field} {value!r} is not an IP address") from None
    if address.version != version:
        raise RecordError(f"{key}: {field} {value!r} is not an IPv{version} address")
    return address


def _ipv4(key: str, doc: dict[str, Any], field: str) -> ipaddress.IPv4Address | None:
    address = _address(key, doc, field, 4)
    return address if isinstance(address, ipaddress.IPv4Address) else None


def _ipv6(key: str, doc: dict[str, Any], field: str) -> ipaddress.IPv6Address | None:
    address = _address(key, doc, field, 6)
    return address if isinstance(address, ipaddress.IPv6Address) else None


def _network(key: str, field: str, value: Any) -> Network:
    if not isinstance(value, str):
        raise RecordError(f"{key}: {field} entries must be CIDR strings")
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError:
        raise RecordError(f"{key}: {field} {value!r} is not a CIDR") from None
