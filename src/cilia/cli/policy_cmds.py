"""`cilia policy ...`, `cilia config`, `cilia endpoint config` and `cilia bpf policy get`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cilia.cli.agent_cmds import (
    FileOption,
    WaitTimeoutOption,
    _read_objects,
    bpf_app,
    client_for,
    endpoint_app,
    wait_for_revision,
)
from cilia.cli.common import NodeOption, Output, OutputOption, SocketOption, fail, print_json, print_table

policy_app = typer.Typer(help="Network policies: import, list, delete, wait for a revision, trace a verdict.",
                         no_args_is_help=True)
bpf_policy_app = typer.Typer(help="Per-endpoint policy map entries.", no_args_is_help=True)
POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
_ON_OFF = {"enabled": True, "true": True, "on": True, "disabled": False, "false": False, "off": False}


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
    bpf_app.add_typer(bpf_policy_app, name="policy")
    app.command("config")(config)


@policy_app.command("import")
def policy_import(files: list[Path] = FileOption, node: str | None = NodeOption,
                  socket: Path | None = SocketOption,
                  wait: bool = typer.Option(True, "--wait/--no-wait",
                                            help="return once every endpoint's policy reflects the import"),
                  wait_timeout: float = WaitTimeoutOption) -> None:
    """Apply policy objects (NetworkPolicy, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy)."""
    from cilia.api.models import ApplyRequest

    objects = _read_objects(files)
    for index, obj in enumerate(objects):
        if obj.get("kind") not in POLICY_KINDS:
            raise fail(f"document {index + 1} is a {obj.get('kind')!r}, not a policy (use `cilia apply`)")
    with client_for(node, socket) as client:
        result = client.apply(ApplyRequest(objects=objects))
        for item in result.items:
            typer.echo(f"{item.kind.lower()}/{item.name} {item.action}")
        typer.echo(f"policy revision {result.revision}")
        if wait:
            wait_for_revision(client, result.revision, wait_timeout)


@policy_app.command("wait")
def policy_wait(
    revision: int = typer.Option(None, "--revision", min=0, help="the revision `apply` printed (default: the current)"),
    timeout: float = typer.Option(60.0, "--timeout", min=0, max=600, help="seconds to wait at most"),
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption,
) -> None:
    """Wait until every endpoint's installed policy reflects a policy revision (exit 1 if not)."""
    from cilia.api.client import describe_wait

    with client_for(node, socket) as client:
        result = client.wait_policy(revision, timeout)
    if output is Output.JSON:
        print_json(result.model_dump())
    elif result.ok:
        typer.echo(f"policy revision {result.revision} enforced on every endpoint (current {result.current})")
    if not result.ok:
        raise fail(describe_wait(result))


@policy_app.command("get")
def policy_get(
    name: str = typer.Argument(None, help="show this policy's YAML"),
    namespace: str = typer.Option("default", "--namespace", help="namespace of a namespaced policy"),
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption,
) -> None:
    """List the policies in force (and the endpoints they select), or show one."""
    import yaml

    with client_for(node, socket) as client:
        if name:
            found = [obj for kind in POLICY_KINDS for obj in client.get("/v1/resources", {"kind": kind})
                     if obj["metadata"]["name"] == name
                     and obj["metadata"].get("namespace", namespace) == namespace]
            if not found:
                raise fail(f"no policy named {name!r} in namespace {namespace!r}")
            if output is Output.JSON:
                print_json(found)
            else:
                typer.echo(yaml.safe_dump_all(found, sort_keys=False).rstrip())
            return
        listing: dict[str, Any] = client.get("/v1/policy")
    if output is Output.JSON:
        print_json(listing)
        return
    print_table(f"policy revision {listing['revision']}", ["KIND", "NAMESPACE", "NAME", "RULES", "ENDPOINTS"],
                [(p["kind"], p["namespace"], p["name"], p["rules"], ",".join(map(str, p["selects_endpoints"])))
                 for p in listing["policies"]])


@policy_app.command("delete")
def policy_delete(
    name: str = typer.Argument(None),
    namespace: str = typer.Option("default", "--namespace"),
    kind: str = typer.Option("CiliumNetworkPolicy", "--kind", help=", ".join(POLICY_KINDS)),
    all_policies: bool = typer.Option(False, "--all", help="delete every policy"),
    node: str | None = NodeOption, socket: Path | None = SocketOption,
) -> None:
    """Delete a policy by name, or all of them."""
    from cilia.api.models import ApplyRequest

    if kind not in POLICY_KINDS:
        raise fail(f"--kind {kind!r} is not one of {', '.join(POLICY_KINDS)}")
    with client_for(node, socket) as client:
        if all_policies:
            objects = [{"kind": k, "metadata": {"name": o["metadata"]["name"],
                                                **({"namespace": o["metadata"]["namespace"]}
                                                   if "namespace" in o["metadata"] else {})}}
                       for k in POLICY_KINDS for o in client.get("/v1/resources", {"kind": k})]
        elif name:
            metadata = {"name": name} if kind == POLICY_KINDS[2] else {"name": name, "namespace": namespace}
            objects = [{"kind": kind, "metadata": metadata}]
        else:
            raise fail("give a policy name or --all")
        result = client.delete(ApplyRequest(objects=objects))
    for item in result.items:
        typer.echo(f"{item.kind.lower()}/{item.name} {item.action}")


def _port(text: str) -> tuple[int, str]:
    number, _, protocol = text.partition("/")
    if not number.isdigit() or not 0 <= int(number) <= 65535:
        raise fail(f"--dport {text!r}: expected PORT[/PROTOCOL], e.g. 80/tcp")
    return int(number), (protocol or "tcp").upper()


@policy_app.command("trace")
def policy_trace(
    dport: str = typer.Option(..., "--dport", help="PORT[/PROTOCOL], e.g. 80/tcp, 53/udp, 8/icmp (type)"),
    src_labels: list[str] = typer.Option([], "--src-labels", "-s", help="k8s:app=client (repeat)"),
    dst_labels: list[str] = typer.Option([], "--dst-labels", "-d"),
    src_pod: str = typer.Option(None, "--src-pod", help="[namespace/]pod of a local endpoint"),
    dst_pod: str = typer.Option(None, "--dst-pod"),
    src_ip: str = typer.Option(None, "--src-ip"),
    dst_ip: str = typer.Option(None, "--dst-ip"),
    node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption,
) -> None:
    """Would this traffic be allowed? Answers from the rules, without sending packets."""
    port, protocol = _port(dport)
    body = {"src_pod": src_pod, "src_labels": src_labels, "src_ip": src_ip, "dst_pod": dst_pod,
            "dst_labels": dst_labels, "dst_ip": dst_ip, "dport": port, "protocol": protocol}
    with client_for(node, socket) as client:
        result: dict[str, Any] = client.post("/v1/policy/trace", body)
    if output is Output.JSON:
        print_json(result)
    else:
        for side in ("egress", "ingress"):
            verdict = result[side]
            if verdict is None:
                typer.echo(f"{side}: not a local endpoint, not enforced here")
                continue
            typer.echo(f"{side}: {verdict['verdict']} by {verdict['decided_by']}"
                       + (" (audit: let through)" if verdict["audited"] else "")
                       + ("" if verdict["enforced"] else " [not enforced]"))
            for rule in verdict["matched_rules"]:
                typer.echo(f"  matched {rule}")
        typer.echo(f"Final verdict: {result['verdict']}")
    raise typer.Exit(0 if result["verdict"] == "ALLOWED" else 1)


@bpf_policy_app.command("get")
def bpf_policy_get(endpoint_id: int, node: str | None = NodeOption, socket: Path | None = SocketOption,
                   output: Output = OutputOption) -> None:
    """An endpoint's live policy map entries: identities, ports, verdict and the rule behind each."""
    with client_for(node, socket) as client:
        dump: dict[str, Any] = client.get(f"/v1/bpf/policy/{endpoint_id}")
    if output is Output.JSON or not dump.get("installed"):
        print_json(dump)
        return
    print_table(f"endpoint {endpoint_id} policy ({dump['identity_entries']} identity entries)",
                ["DIRECTION", "IDENTITIES", "PROTOCOL", "PORT", "VERDICT", "RULE"],
                [(r["direction"], r["identities"] if isinstance(r["identities"], str)
                  else ",".join(map(str, r["identities"])), r["protocol"], r["port"], r["verdict"], r["rule"])
                 for r in dump["entries"]])


def _on_off(key: str, value: str) -> bool | None:
    if value.lower() == "default":
        return None
    if value.lower() not in _ON_OFF:
        raise fail(f"{key}={value!r}: expected Enabled, Disabled or Default")
    return _ON_OFF[value.lower()]


@endpoint_app.command("config")
def endpoint_config(endpoint_id: int, settings: list[str] = typer.Argument(..., help="PolicyAuditMode=Enabled"),
                    node: str | None = NodeOption, socket: Path | None = SocketOption) -> None:
    """Per-endpoint settings (PolicyAuditMode=Enabled|Disabled|Default)."""
    body: dict[str, Any] = {}
    for setting in settings:
        key, _, value = setting.partition("=")
        if key != "PolicyAuditMode":
            raise fail(f"unknown endpoint setting {key!r} (known: PolicyAuditMode)")
        body["policy_audit_mode"] = _on_off(key, value)
    with client_for(node, socket) as client:
        endpoint = client.patch(f"/v1/endpoints/{endpoint_id}/config", body)
    typer.echo(f"endpoint {endpoint_id}: policy {endpoint['policy']}")


def config(settings: list[str] = typer.Argument(None, help="PolicyEnforcement=always, PolicyAuditMode=Enabled, "
                                                          "AllowLocalhost=policy"),
           node: str | None = NodeOption, socket: Path | None = SocketOption, output: Output = OutputOption) -> None:
    """Show or change the agent's runtime settings."""
    body: dict[str, Any] = {}
    for setting in settings or []:
        key, _, value = setting.partition("=")
        if key == "PolicyEnforcement":
            body["policy_enforcement"] = value.lower()
        elif key == "PolicyAuditMode":
            body["policy_audit_mode"] = bool(_on_off(key, value))
        elif key == "AllowLocalhost":
            body["allow_localhost"] = value.lower()
        else:
            raise fail(f"unknown setting {key!r} (known: PolicyEnforcement, PolicyAuditMode, AllowLocalhost)")
    with client_for(node, socket) as client:
        current: dict[str, Any] = client.patch("/v1/config", body) if body else client.get("/v1/config")
    if output is Output.JSON:
        print_json(current)
    else:
        print_table(None, ["SETTING", "VALUE"], list(current.items()))
