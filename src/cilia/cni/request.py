"""Parses what a runtime hands the plugin: CNI_* environment, network config on stdin, CNI_ARGS."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
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
# The spec's CNI_CONTAINERID: alphanumeric first, then alphanumerics, '_', '.', '-'.
CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}\Z")
IFNAMSIZ = 16  # Linux: an interface name is at most 15 bytes


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
    # ADD only: the addresses asked for (checked), and where the IPs came from ("CNI_ARGS" or
    # "network config": the error code for an address the agent refuses depends on it).
    ips: tuple[str, ...] = ()
    mac: str | None = None
    ips_origin: str = ""


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
    if socket is not None and (not isinstance(socket, str) or not socket.startswith("/") or "\0" in socket):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "agentSocket": must be an absolute path')
    log_file = raw.get("logFile")
    if log_file is not None and (not isinstance(log_file, str) or "\0" in log_file):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "logFile": must be a path (a string)')
    runtime_config = raw.get("runtimeConfig")
    if runtime_config is not None and not isinstance(runtime_config, dict):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "runtimeConfig": must be an object')
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
        runtime_config=_lower_keys(runtime_config),
        raw=raw,
    )


def _check_container_env(command: str, env: dict[str, str]) -> None:
    required = ["CNI_CONTAINERID", "CNI_IFNAME"] + (["CNI_NETNS"] if command in ("ADD", "CHECK") else [])
    for var in required:
        if not env.get(var):
            raise CniError(INVALID_ENV, f"environment variable {var} is required for {command}")
    if not CONTAINER_ID.match(env["CNI_CONTAINERID"]):
        raise CniError(INVALID_ENV, f"environment variable CNI_CONTAINERID: {env['CNI_CONTAINERID']!r} must start "
                       "with a letter or digit and hold only letters, digits, '_', '.' and '-'")
    ifname = env["CNI_IFNAME"]
    if len(ifname.encode()) >= IFNAMSIZ or ifname in (".", "..") or any(c in ifname for c in "/:") \
            or any(c.isspace() for c in ifname):
        raise CniError(INVALID_ENV, f"environment variable CNI_IFNAME: {ifname!r} is not a valid interface name "
                       f"(at most {IFNAMSIZ - 1} bytes, no '/', ':' or whitespace)")


def parse_request(env: dict[str, str], stdin: str) -> CniRequest:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(sorted(COMMANDS))}")
    if command == "VERSION":
        return CniRequest(command, "", "", "")
    conf = parse_netconf(stdin)
    if command in ("STATUS", "GC"):
        if command == "GC":
            valid_attachments(conf)  # a malformed list is refused before anything is removed
        return CniRequest(command, "", "", "", conf=conf)
    _check_container_env(command, env)
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    request = CniRequest(
        command=command,
        container_id=env["CNI_CONTAINERID"],
        netns=env.get("CNI_NETNS", ""),
        ifname=env["CNI_IFNAME"],
        args=args,
        conf=conf,
    )
    if command == "ADD":
        ips, origin = _requested_ips(args, conf)
        request = replace(request, ips=ips, mac=_requested_mac(args, conf), ips_origin=origin)
    elif command == "CHECK":
        prev_result_addresses(conf.prev_result)
    return request


def _ip(text: str, where: str, code: int) -> str:
    """An address, with an optional /prefix (runtimes pass either); the bare address is returned."""
    try:
        return str(ipaddress.ip_interface(text).ip)
    except ValueError:
        raise CniError(code, f"{where}: {text!r} is not an IP address") from None


def _ip_list(raw: Any, where: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CniError(INVALID_NETWORK_CONFIG, f'network config: field "{where}": must be a list of IP addresses')
    found = []
    for index, text in enumerate(raw):
        if not isinstance(text, str):
            raise CniError(INVALID_NETWORK_CONFIG, f'network config: field "{where}[{index}]": must be a string')
        found.append(_ip(text, f'network config: field "{where}[{index}]"', INVALID_NETWORK_CONFIG))
    return found


def _requested_ips(args: dict[str, str], conf: NetConf) -> tuple[tuple[str, ...], str]:
    """IPs asked for by CNI_ARGS IP=, runtimeConfig ips, or args.cni.ips (first wins per family)."""
    from_args = [_ip(text, "CNI_ARGS: IP", INVALID_ENV) for text in args.get("IP", "").split(",") if text]
    cni_args: Any = conf.raw.get("args")
    if cni_args is not None and not isinstance(cni_args, dict):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "args": must be an object')
    cni_args = (cni_args or {}).get("cni")
    if cni_args is not None and not isinstance(cni_args, dict):
        raise CniError(INVALID_NETWORK_CONFIG, 'network config: field "args.cni": must be an object')
    from_conf = _ip_list(conf.runtime_config.get("ips"), "runtimeConfig.ips") \
        + _ip_list((cni_args or {}).get("ips"), "args.cni.ips")
    origin = "CNI_ARGS" if from_args else "network config" if from_conf else ""
    return tuple(from_args + from_conf), origin


def _requested_mac(args: dict[str, str], conf: NetConf) -> str | None:
    if args.get("MAC"):
        if not MAC.match(args["MAC"]):
            raise CniError(INVALID_ENV, f"CNI_ARGS: MAC {args['MAC']!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
        return args["MAC"].lower()
    raw = conf.runtime_config.get("mac")
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not MAC.match(raw):
        raise CniError(INVALID_NETWORK_CONFIG,
                       f'network config: field "runtimeConfig.mac": {raw!r} is not a MAC address (aa:bb:cc:dd:ee:ff)')
    return raw.lower()


def requested_ips(request: CniRequest) -> list[str]:
    """The addresses an ADD asks for (checked by parse_request), CNI_ARGS first."""
    return list(request.ips)


def requested_mac(request: CniRequest) -> str | None:
    return request.mac


def _object_list(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise CniError(INVALID_NETWORK_CONFIG, f'network config: field "{where}": must be a list of objects')
    return raw


def prev_result_addresses(prev: dict[str, Any] | None) -> tuple[set[str], list[dict[str, Any]]]:
    """(the `ips[].address` strings, the `interfaces`) of a CHECK's prevResult, shape checked."""
    if not prev:
        return set(), []
    addresses: set[str] = set()
    for index, ip in enumerate(_object_list(prev.get("ips"), "prevResult.ips")):
        address = ip.get("address")
        if not isinstance(address, str):
            raise CniError(INVALID_NETWORK_CONFIG,
                           f'network config: field "prevResult.ips[{index}].address": must be a string')
        addresses.add(address)
    return addresses, _object_list(prev.get("interfaces"), "prevResult.interfaces")


def valid_attachments(conf: NetConf) -> list[dict[str, str]]:
    """GC's `cni.dev/valid-attachments`: each with a containerID (and an ifname, default eth0)."""
    field_name = "cni.dev/valid-attachments"
    attachments = []
    for index, item in enumerate(_object_list(conf.raw.get(field_name), field_name)):
        container_id, ifname = item.get("containerID"), item.get("ifname", "eth0")
        if not isinstance(container_id, str) or not container_id or not isinstance(ifname, str):
            raise CniError(INVALID_NETWORK_CONFIG, f'network config: field "{field_name}[{index}]": needs '
                           "containerID (a string) and an optional ifname (a string)")
        attachments.append({"containerID": container_id, "ifname": ifname})
    return attachments
