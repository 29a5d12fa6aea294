"""Renders an endpoint as a CNI Result in the version the network config asked for."""

from __future__ import annotations

from typing import Any


def render_result(cni_version: str, *, ifname: str, mac: str, sandbox: str, ipv4: str | None,
                  ipv6: str | None, gateway_ipv4: str | None, gateway_ipv6: str | None) -> dict[str, Any]:
    """1.x and 0.4.0 share a shape; 0.3.x adds `version` to each IP entry."""
    ips: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for address, prefix, gateway, version, default in (
        (ipv4, 32, gateway_ipv4, "4", "0.0.0.0/0"),
        (ipv6, 128, gateway_ipv6, "6", "::/0"),
    ):
        if not address:
            continue
        entry: dict[str, Any] = {"address": f"{address}/{prefix}", "interface": 0}
        if gateway:
            entry["gateway"] = gateway
            routes.append({"dst": default, "gw": gateway})
        if cni_version.startswith("0.3"):
            entry["version"] = version
        ips.append(entry)
    return {
        "cniVersion": cni_version,
        "interfaces": [{"name": ifname, "mac": mac, "sandbox": sandbox}],
        "ips": ips,
        "routes": routes,
        "dns": {},
    }
