"""`cilia-cni`: the CNI plugin executable. No kernel work here: it asks the node's agent.

VERSION is answered without importing httpx or pydantic (runtimes call it on every command).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cilia.cni.request import (
    CniRequest,
    parse_request,
    prev_result_addresses,
    requested_ips,
    requested_mac,
    valid_attachments,
)
from cilia.cni.result import render_result
from cilia.cni.spec import (
    DEFAULT_VERSION,
    INVALID_ENV,
    INVALID_NETWORK_CONFIG,
    IO_ERROR,
    PLUGIN_NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
    version_output,
)

log = logging.getLogger("cilia-cni")


def _socket(request: CniRequest) -> Path:
    assert request.conf is not None
    if request.conf.agent_socket is not None:
        return request.conf.agent_socket
    from cilia.paths import NodePaths, default_node_name

    return NodePaths(default_node_name()).socket


def run(request: CniRequest) -> str | None:
    """Execute one command; returns what to print on stdout (None for nothing)."""
    from cilia.api.client import AgentClient, AgentError, AgentUnavailable
    from cilia.api.models import EndpointCreateRequest, GcRequest

    assert request.conf is not None
    conf = request.conf
    socket = _socket(request)
    try:
        with AgentClient(socket) as client:
            if request.command == "ADD":
                ips = requested_ips(request)
                endpoint = client.create_endpoint(
                    EndpointCreateRequest(
                        container_id=request.container_id,
                        netns=request.netns,
                        ifname=request.ifname,
                        pod_namespace=request.args.get("K8S_POD_NAMESPACE") or "default",
                        pod_name=request.args.get("K8S_POD_NAME", ""),
                        pod_uid=request.args.get("K8S_POD_UID", ""),
                        infra_container_id=request.args.get("K8S_POD_INFRA_CONTAINER_ID", ""),
                        requested_ipv4=next((ip for ip in ips if ":" not in ip), None),
                        requested_ipv6=next((ip for ip in ips if ":" in ip), None),
                        requested_mac=requested_mac(request),
                        mtu=conf.mtu,
                    )
                )
                return json.dumps(render_result(
                    conf.cni_version, ifname=endpoint.ifname, mac=endpoint.mac, sandbox=request.netns,
                    ipv4=endpoint.ipv4, ipv6=endpoint.ipv6,
                    gateway_ipv4=endpoint.gateway_ipv4, gateway_ipv6=endpoint.gateway_ipv6,
                ))
            if request.command == "DEL":
                removed = client.delete_endpoint_by_container(request.container_id, request.ifname)
                log.info("DEL %s/%s: %s", request.container_id, request.ifname, "removed" if removed else "unknown")
                return None
            if request.command == "CHECK":
                endpoint_or_none = client.get_endpoint_by_container(request.container_id, request.ifname)
                if endpoint_or_none is None:
                    raise CniError(UNKNOWN_CONTAINER, f"no endpoint for container {request.container_id!r} "
                                   f"interface {request.ifname!r}")
                _check_prev_result(conf.prev_result, endpoint_or_none.mac, endpoint_or_none.ipv4,
                                   endpoint_or_none.ipv6)
                return None
            if request.command == "STATUS":
                client.healthz()
                return None
            if request.command == "GC":
                client.gc(GcRequest(valid_attachments=valid_attachments(conf)))
                return None
    except AgentUnavailable as exc:
        if request.command == "DEL":
            # The container is going away whatever we say; the agent cleans up on its next GC.
            log.warning("DEL with the agent unreachable: %s", exc)
            return None
        raise CniError(PLUGIN_NOT_AVAILABLE if request.command == "STATUS" else TRY_AGAIN_LATER,
                       str(exc)) from exc
    except AgentError as exc:
        raise agent_error(request, exc.status, exc.body.code, exc.body.message, exc.body.details) from exc
    return None


def agent_error(request: CniRequest, status: int, code: int, message: str, details: str = "") -> CniError:
    """The CNI error for an agent's error answer. A spec code (below 100) passes through, with one
    refinement: the agent says INVALID_ENV when it cannot give a requested address, not knowing where
    the runtime put it; the plugin does, and an address from the network config (runtimeConfig.ips,
    args.cni.ips) is INVALID_NETWORK_CONFIG. cilia's own codes become IO_ERROR for a failure on the
    node (5xx) and INVALID_NETWORK_CONFIG for a refused request (4xx)."""
    if code == INVALID_ENV:
        if request.ips_origin == "network config":
            return CniError(INVALID_NETWORK_CONFIG, f"network config: {message}", details)
        return CniError(INVALID_ENV, f"CNI_ARGS: {message}" if request.ips_origin else message, details)
    if code < 100:
        return CniError(code, message, details)
    return CniError(IO_ERROR if status >= 500 else INVALID_NETWORK_CONFIG, message, details)


def _check_prev_result(prev: dict[str, Any] | None, mac: str, ipv4: str | None, ipv6: str | None) -> None:
    have, interfaces = prev_result_addresses(prev)
    want = {f"{ipv4}/32" if ipv4 else "", f"{ipv6}/128" if ipv6 else ""} - {""}
    if have and have != want:
        raise CniError(INVALID_NETWORK_CONFIG, f"CHECK: prevResult ips {sorted(have)} differ from the endpoint's "
                       f"{sorted(want)}")
    for interface in interfaces:
        if interface.get("sandbox") and interface.get("mac") not in (None, mac):
            raise CniError(INVALID_NETWORK_CONFIG, f"CHECK: prevResult mac {interface.get('mac')} differs from {mac}")


def main() -> None:
    env = dict(os.environ)
    stdin = sys.stdin.read() if env.get("CNI_COMMAND") != "VERSION" else ""
    version = DEFAULT_VERSION
    try:
        request = parse_request(env, stdin)
        if request.command == "VERSION":
            sys.stdout.write(version_output(DEFAULT_VERSION) + "\n")
            return
        assert request.conf is not None
        version = request.conf.cni_version
        if request.conf.log_file:
            try:
                logging.basicConfig(filename=request.conf.log_file, level=logging.INFO,
                                    format="%(asctime)s %(levelname)s %(message)s")
            except OSError as exc:  # a log we cannot write must not fail the command: stderr is for logs
                sys.stderr.write(f"cilia-cni: cannot log to {request.conf.log_file}: {exc}\n")
        output = run(request)
        if output is not None:
            sys.stdout.write(output + "\n")
    except CniError as exc:
        sys.stdout.write(exc.to_json(version) + "\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
