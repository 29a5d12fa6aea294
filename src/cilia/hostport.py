"""`address:port` text, with IPv6 addresses in brackets (`[fd00::1]:80`), for every view and log."""

from __future__ import annotations

import ipaddress


def host_port(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    text = str(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"
