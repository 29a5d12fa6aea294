"""CLI commands answered by the node's agent: status, endpoint, identity, bpf, apply, delete."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from cilia.cli.common import (
    NodeOption,
    Output,
    OutputOption,
    SocketOption,
    agent_socket,
    fail,
    print_json,
    print_table,
)

endpoint_app = typer.Typer(help="Endpoints (one per pod interface) on this node.", no_args_is_help=True)
identity_app = typer.Typer(help="Security identities (label sets -> numbers).", no_args_is_help=True)
bpf_app = typer.Typer(help="Read the datapath's BPF maps.", no_args_is_help=True)
bpf_ct_app = typer.Typer(help="Connection tracking table.", no_args_is_help=True)
bpf_ipcache_app = typer.Typer(help="IP/prefix -> identity cache.", no_args_is_help=True)
bpf_endpoint_app = typer.Typer(help="Local endpoints map.", no_args_is_help=True)
bpf_metrics_app = typer.Typer(help="Per-endpoint packet counters.", no_args_is_help=True)


@contextmanager
def client_for(node: str | None, socket: Path | None) -> Iterator[Any]:
    """The agent's API client; connection and API errors become a CLI error and exit code 1."""
    from cilia.api.client import AgentClient, AgentError, AgentUnavailable

    try:
        with AgentClient(agent_socket(node, socket)) as client:
            yield client
    except AgentUnavailable as exc:
        raise fail(str(exc)) from exc
    except AgentError as exc:
        raise fail(str(exc)) from exc


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("apply")(apply)
    app.command("delete")(delete)
    app.add_typer(endpoint_app, name="endpoint")
    app.add_typer(identity_app, name="identity")
    bpf_app.add_typer(bpf_ct_app, name="ct")
    bpf_app.add_typer(bpf_ipcache_app, name="ipcache")
    bpf_app.add_typer(bpf_endpoint_app, name="endpoint")
    bpf_app.add_typer(bpf_metrics_app, name="metrics")
    app.add_typer(bpf_app, name="bpf")


def status(node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption) -> None:
    """Health and summary of the node's agent and datapath."""
    with client_for(node, socket) as client:
        info = client.status().model_dump()
    if output is Output.JSON:
        print_json(info)
        return
    nested = ("datapath", "kvstore", "cluster_nodes")
    rows = [(key, value) for key, value in info.items() if key not in nested]
    rows += [(f"datapath.{key}", value) for key, value in info["datapath"].items()]
    kvstore = info.get("kvstore")
    if kvstore:
        state = "reachable" if kvstore["reachable"] else f"UNREACHABLE ({kvstore['error']})"
        rows.append(("kvstore", f"{kvstore['backend']}: {state}"))
        if kvstore["backend"] == "etcd":
            rows += [(f"kvstore.{key}", kvstore[key])
                     for key in ("endpoint", "member_id", "leader_id", "revision", "lag", "lease", "pending")]
    nodes = info.get("cluster_nodes") or []
    if nodes:
        healthy = sum(1 for n in nodes if n["health"] == "ok")
        rows.append(("cluster.nodes", f"{len(nodes)} ({healthy} ok): "
                     + ", ".join(n["name"] + ("" if n["health"] == "ok" else f" [{n['health']}]") for n in nodes)))
    print_table(None, ["field", "value"], rows)


def _read_objects(files: list[Path]) -> list[dict[str, Any]]:
    from cilia.resources import ResourceError, parse_documents

    objects: list[dict[str, Any]] = []
    for path in files:
        try:
            text = path.read_text() if str(path) != "-" else typer.get_text_stream("stdin").read()
        except OSError as exc:
            raise fail(f"{path}: {exc.strerror}") from exc
        try:
            objects.extend(parse_documents(text, str(path)))
        except ResourceError as exc:
            raise fail(str(exc)) from exc
    return objects


FileOption = typer.Option(..., "--filename", "-f", help="YAML file (kubectl style, multi-document); - for stdin")
WaitTimeoutOption = typer.Option(60.0, "--wait-timeout", min=0, max=600,
                                 help="seconds --wait waits for the endpoints' policy")


def wait_for_revision(client: Any, revision: int | None, timeout: float) -> None:
    """Wait until every endpoint's policy reflects `revision`; exit 1 naming the laggards otherwise."""
    from cilia.api.client import describe_wait

    result = client.wait_policy(revision, timeout)
    if not result.ok:
        raise fail(describe_wait(result))
    typer.echo(f"policy revision {result.revision} enforced on every endpoint")


def apply(
    files: list[Path] = FileOption,
    node: str | None = NodeOption,
    socket: Path | None = SocketOption,
    wait: bool = typer.Option(False, "--wait", help="return once every endpoint's policy reflects the change"),
    wait_timeout: float = WaitTimeoutOption,
) -> None:
    """Create or update objects (Namespace, Pod, ...) from kubectl-shaped YAML."""
    from cilia.api.models import ApplyRequest

    objects = _read_objects(files)
    with client_for(node, socket) as client:
        result = client.apply(ApplyRequest(objects=objects))
        for item in result.items:
            ref = f"{item.kind.lower()}/{item.name}"
            typer.echo(f"{ref} {item.action}" + (f" (namespace {item.namespace})" if item.namespace else ""))
        if result.revision is not None:
            typer.echo(f"policy revision {result.revision}")
        if wait:
            wait_for_revision(client, result.revision, wait_timeout)


def delete(
    files: list[Path] = FileOption,
    node: str | None = NodeOption,
    socket: Path | None = SocketOption,
) -> None:
    """Delete the objects named in kubectl-shaped YAML."""
    from cilia.api.models import ApplyRequest

    objects = _read_objects(files)
    with client_for(node, socket) as client:
        result = client.delete(ApplyRequest(objects=objects))
    for item in result.items:
        typer.echo(f"{item.kind.lower()}/{item.name} {item.action}")
    if result.revision is not None:
        typer.echo(f"policy revision {result.revision}")


@endpoint_app.command("list")
def endpoint_list(
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption
) -> None:
    """Every endpoint: id, pod, addresses, identity, state."""
    with client_for(node, socket) as client:
        endpoints = client.list_endpoints()
    if output is Output.JSON:
        print_json([e.model_dump() for e in endpoints])
        return
    print_table(
        None,
        ["ID", "POD", "IPv4", "IPv6", "IDENTITY", "POLICY INGRESS", "POLICY EGRESS", "STATE", "INTERFACE"],
        [
            (e.id, f"{e.pod_namespace}/{e.pod_name}", e.ipv4, e.ipv6, e.identity,
             e.policy.ingress if e.policy else "?", e.policy.egress if e.policy else "?",
             e.state.value + (f" ({e.state_reason})" if e.state.value == "not-ready" else ""),
             e.host_ifname)
            for e in endpoints
        ],
    )


@endpoint_app.command("get")
def endpoint_get(
    endpoint_id: int,
    node: str | None = NodeOption,
    socket: Path | None = SocketOption,
    output: Output = OutputOption,
) -> None:
    """One endpoint in full."""
    with client_for(node, socket) as client:
        endpoint = client.get_endpoint(endpoint_id)
    data = endpoint.model_dump()
    if output is Output.JSON:
        print_json(data)
        return
    print_table(f"endpoint {endpoint_id}", ["field", "value"], list(data.items()))


@identity_app.command("list")
def identity_list(
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption
) -> None:
    """Every identity with its labels."""
    with client_for(node, socket) as client:
        identities = client.list_identities()
    if output is Output.JSON:
        print_json([i.model_dump() for i in identities])
        return
    print_table(None, ["ID", "LABELS", "REFS"], [(i.id, "\n".join(i.labels), i.references) for i in identities])


@identity_app.command("get")
def identity_get(
    identity_id: int,
    node: str | None = NodeOption,
    socket: Path | None = SocketOption,
    output: Output = OutputOption,
) -> None:
    """One identity."""
    with client_for(node, socket) as client:
        identity = client.get_identity(identity_id)
    if output is Output.JSON:
        print_json(identity.model_dump())
        return
    print_table(None, ["ID", "LABELS", "REFS"], [(identity.id, "\n".join(identity.labels), identity.references)])


def _dump(path: str, node: str | None, socket: Path | None, output: Output, columns: list[str]) -> None:
    with client_for(node, socket) as client:
        rows: list[dict[str, Any]] = client.get(path)
    if output is Output.JSON:
        print_json(rows)
        return
    print_table(None, [c.upper() for c in columns], [[row.get(c) for c in columns] for row in rows])


@bpf_ct_app.command("list")
def bpf_ct_list(
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption
) -> None:
    """Connection tracking entries (both TCP and non-TCP tables)."""
    _dump(
        "/v1/bpf/ct",
        node,
        socket,
        output,
        ["proto", "source", "destination", "state", "expires_in", "tx_packets", "rx_packets", "src_identity"],
    )


@bpf_ipcache_app.command("list")
def bpf_ipcache_list(
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption
) -> None:
    """Prefix -> identity entries."""
    _dump("/v1/bpf/ipcache", node, socket, output, ["prefix", "identity", "tunnel_endpoint"])


@bpf_endpoint_app.command("list")
def bpf_endpoint_list(
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption
) -> None:
    """Local endpoint entries keyed by IP."""
    _dump("/v1/bpf/endpoints", node, socket, output, ["ip", "endpoint_id", "ifindex", "mac", "lxc_mac"])


@bpf_metrics_app.command("list")
def bpf_metrics_list(
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption
) -> None:
    """Packets and bytes per endpoint, direction and reason."""
    _dump("/v1/bpf/metrics", node, socket, output, ["endpoint_id", "direction", "reason", "packets", "bytes"])
