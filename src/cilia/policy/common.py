"""Parsing helpers shared by the NetworkPolicy and Cilium policy parsers."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from cilia.policy.errors import PolicyError
from cilia.policy.rules import PROTOCOL_NUMBERS, NamedPort, Network, PortRange
from cilia.resources.fields import as_list, is_number
from cilia.resources.validate import DNS1123_LABEL, describe

Fail = Callable[[str, str], PolicyError]


def failer(obj: dict[str, Any]) -> Fail:
    def fail(field: str, problem: str) -> PolicyError:
        return PolicyError(f"{describe(obj)}: field {field!r}: {problem}")

    return fail


def parse_network(text: Any, where: str, fail: Fail) -> Network:
    if not isinstance(text, str) or not text:
        raise fail(where, "must be a CIDR string like 10.0.0.0/8")
    try:
        return ipaddress.ip_network(text if "/" in text else f"{text}/{128 if ':' in text else 32}", strict=False)
    except ValueError as exc:
        raise fail(where, f"{text!r} is not a valid CIDR: {exc}") from exc


def parse_cidr_with_excepts(cidr: Any, excepts: Any, where: str, except_field: str, fail: Fail,
                            ) -> tuple[Network, tuple[Network, ...]]:
    network = parse_network(cidr, f"{where}.cidr", fail)
    parsed: list[Network] = []
    for index, text in enumerate(as_list(excepts, f"{where}.{except_field}", fail)):
        at = f"{where}.{except_field}[{index}]"
        exception = parse_network(text, at, fail)
        if exception.version != network.version or not exception.subnet_of(network):  # type: ignore[arg-type]
            raise fail(at, f"{exception} is not inside {network}")
        parsed.append(exception)
    return network, tuple(parsed)


def parse_protocol(raw: Any, where: str, fail: Fail, allowed: tuple[str, ...]) -> str:
    protocol = "TCP" if raw is None else raw
    if not isinstance(protocol, str) or protocol.upper() not in allowed:
        raise fail(where, f"{protocol!r} is not one of {', '.join(allowed)}")
    return protocol.upper()


def parse_port(port: Any, end_port: Any, protocol: str, where: str, fail: Fail,
               ) -> tuple[list[PortRange], list[NamedPort]]:
    """A port by number (int or numeric string), by name, or absent (all ports); endPort makes a range.
    protocol ANY expands to TCP, UDP and SCTP."""
    protocols = ["TCP", "UDP", "SCTP"] if protocol == "ANY" else [protocol]
    numbers = [PROTOCOL_NUMBERS[p] for p in protocols]
    if port is None or port == "" or port == 0 or port == "0":
        if end_port is not None:
            raise fail(f"{where}.endPort", "needs a port")
        return [PortRange(n) for n in numbers], []
    if isinstance(port, str) and not is_number(port):
        if end_port is not None:
            raise fail(f"{where}.endPort", "cannot be used with a named port")
        if len(port) > 15 or not DNS1123_LABEL.match(port):
            raise fail(f"{where}.port", f"{port!r} is neither a port number 1-65535 nor a valid port name")
        return [], [NamedPort(port, n) for n in numbers]
    if isinstance(port, bool) or not isinstance(port, (int, str)):
        raise fail(f"{where}.port", "must be a number 1-65535 or a port name")
    low = int(port)
    if not 1 <= low <= 65535:
        raise fail(f"{where}.port", f"{low} is out of range 1-65535")
    high = low
    if end_port is not None:
        if isinstance(end_port, bool) or not isinstance(end_port, (int, str)) or not is_number(str(end_port)):
            raise fail(f"{where}.endPort", "must be a number")
        high = int(end_port)
        if not low <= high <= 65535:
            raise fail(f"{where}.endPort", f"{high} must be between port {low} and 65535")
    return [PortRange(n, low, high) for n in numbers], []
