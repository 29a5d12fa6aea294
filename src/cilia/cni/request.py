"""Parses what a runtime hands the plugin: CNI_* environment, network config on stdin, CNI_ARGS."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cilia.cni.spec import (
    DECODE_ERROR,
    INCOMPATIBLE_VERSION,
    INVALID_ENV,
    INVALID_NETWORK_CONFIG,
    SUPPORTED_VERSIONS,
    CniError,
)

COMMANDS = {"ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"}
K8S_ARGS = {"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}
KNOWN_ARGS = K8S_ARGS | {"IgnoreUnknown", "MAC", "IP"}


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    agent_socket: Path | None
    mtu: int | None
    log_file: str | None
    prev_result: dict[str, Any] | None
    runtime_config: dict[str, Any]
    raw: dict[str, Any]


@dataclass(frozen=True)
class CniRequest:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str] = field(default_factory=dict)
    conf: NetConf | None = None


def parse_cni_args(text: str) -> dict[str, str]:
    """`K=V;K=V`. Unknown keys are an error unless IgnoreUnknown=1/true (as the spec's libcni does)."""
    args: dict[str, str] = {}
    if not text:
        return args
    for part in text.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        args[key] = value
    ignore_unknown = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and not ignore_unknown:
        raise CniError(INVALID_ENV, f"CNI_ARGS: unknown key {unknown[0]!r} (set IgnoreUnknown=1 to allow it)")
    return args


def _lower_keys(value: Any) -> Any:
    return {str(k).lower(): v for k, v in value.items()} if isinstance(value, dict) else {}


def parse_netconf(stdin: str) -> NetConf:
    try:
        raw = json.loads(stdin)
    except json.JSONDecodeError as exc:
        raise CniError(DECODE_ERROR, f"network config: malformed JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise CniError(DECODE_ERROR, "network config: must be a JSON object")
    version = raw.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "cniVersion" is required')
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f'network config: cniVersion "{version}" is not supported',
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "name" is required')
    mtu = raw.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or not 576 <= mtu <= 65535):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "mtu": must be an integer 576-65535')
    socket = raw.get("agentSocket")
    if socket is not None and (not isinstance(socket, str) or not socket.startswith("/")):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "agentSocket": must be an absolute path')
    log_file = raw.get("logFile")
    if log_file is not None and not isinstance(log_file, str):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "logFile": must be a string')
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "prevResult": must be an object')
    return NetConf(
        cni_version=version,
        name=name,
        agent_socket=Path(socket) if socket else None,
        mtu=mtu,
        log_file=log_file,
        prev_result=prev,
        runtime_config=_lower_keys(raw.get("runtimeConfig")),
        raw=raw,
    )


def parse_request(env: dict[str, str], stdin: str) -> CniRequest:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(sorted(COMMANDS))}")
    if command == "VERSION":
        return CniRequest(command, "", "", "")
    conf = parse_netconf(stdin)
    if command in ("STATUS", "GC"):
        return CniRequest(command, "", "", "", conf=conf)
    required = ["CNI_CONTAINERID", "CNI_IFNAME"] + (["CNI_NETNS"] if command in ("ADD", "CHECK") else [])
    for var in required:
        if not env.get(var):
            raise CniError(INVALID_ENV, f"environment variable {var} is required for {command}")
    return CniRequest(
        command=command,
        container_id=env["CNI_CONTAINERID"],
        netns=env.get("CNI_NETNS", ""),
        ifname=env["CNI_IFNAME"],
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        conf=conf,
    )


def requested_ips(request: CniRequest) -> list[str]:
    """IPs asked for by CNI_ARGS IP=, runtimeConfig ips, or args.cni.ips (first wins per family)."""
    found: list[str] = []
    if request.args.get("IP"):
        found += request.args["IP"].split(",")
    if request.conf is not None:
        found += [str(ip) for ip in request.conf.runtime_config.get("ips", []) or []]
        cni_args = request.conf.raw.get("args", {}).get("cni", {}) if isinstance(request.conf.raw.get("args"), dict) \
            else {}
        found += [str(ip) for ip in cni_args.get("ips", []) or []]
    return [ip.split("/")[0] for ip in found if ip]


def requested_mac(request: CniRequest) -> str | None:
    if request.args.get("MAC"):
        return request.args["MAC"]
    if request.conf is not None and request.conf.runtime_config.get("mac"):
        return str(request.conf.runtime_config["mac"])
    return None
