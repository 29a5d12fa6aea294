"""Policy on the lab with real TCP and UDP: namespaces x, y, z with pods a, b, c (tcp 80, tcp 81,
udp 80) and an external host world1. Each step applies a set of policies and checks the whole
reachability matrix against what the Kubernetes / Cilium semantics say it must be."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from cilia.api.client import AgentClient, AgentError
from cilia.api.models import ApplyRequest
from cilia.lab.lab import Lab
from cilia.lab.process import in_netns
from cilia.paths import NodePaths
from cilia.testing import wait_for
from cilia.testing.labs import running_lab
from cilia.testing.reach import Key, Target, format_mismatches, pod_names, pod_targets, policy_topology, probe_rows

Expect = Callable[[str, str, int, str], bool]  # source, target, port, protocol -> reachable
POLICY_KINDS = ("NetworkPolicy", "CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy")
WAIT = 30.0  # seconds an apply waits for the endpoints' policy revision


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab(policy_topology()) as running:
        yield running


def api() -> AgentClient:
    return AgentClient(NodePaths("n1").socket)


def clear_policies() -> None:
    with api() as client:
        objects = [{"kind": kind, "metadata": {k: v for k, v in o["metadata"].items() if k in ("name", "namespace")}}
                   for kind in POLICY_KINDS for o in client.get("/v1/resources", {"kind": kind})]
        if objects:
            client.delete(ApplyRequest(objects=objects), wait=WAIT)
        client.patch("/v1/config", {"policy_enforcement": "default", "policy_audit_mode": False})


def apply(text: str) -> None:
    """Apply and wait until every endpoint's policy reflects it (regeneration runs in the background)."""
    with api() as client:
        client.apply(ApplyRequest(objects=[o for o in yaml.safe_load_all(text) if o]), wait=WAIT)


def rows() -> dict[str, list[Target]]:
    table = {p: [*pod_targets(), Target("world1", 80)] for p in pod_names()}
    table["world1"] = [Target(p, 80) for p in pod_names()]
    return table


def check(lab: Lab, expect: Expect) -> None:
    actual = probe_rows(lab, rows(), timeout=1.0)
    expected: dict[Key, bool] = {key: (key[0] == key[1]) or expect(*key) for key in actual}
    # a pod talking to itself never crosses its veth: nothing to enforce, always reachable
    actual = {key: (key[0] == key[1]) or value for key, value in actual.items()}
    mismatches = format_mismatches(expected, actual)
    if mismatches:  # one retry: a SYN lost for another reason must not fail the matrix
        again = probe_rows(lab, rows(), timeout=2.0)
        actual = {key: (key[0] == key[1]) or value for key, value in again.items()}
        mismatches = format_mismatches(expected, actual)
    assert not mismatches, "reachability differs from the policy semantics:\n" + mismatches


def ns(name: str) -> str:
    return name.split("/")[0] if "/" in name else ""


def pod(name: str) -> str:
    return name.split("/")[1] if "/" in name else name


def everything(_s: str, _t: str, _p: int, _proto: str) -> bool:
    return True


def NP(name: str, namespace: str, spec: str) -> str:
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\n" \
           f"spec:\n{spec}\n---\n"


def CNP(name: str, namespace: str, spec: str) -> str:
    return f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\n" \
           f"spec:\n{spec}\n---\n"


def CCNP(name: str, spec: str) -> str:
    return f"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}\n---\n"


DENY_X = NP("deny-all", "x", "  podSelector: {}\n  policyTypes: [Ingress]")
into_x_a: Callable[[str], bool] = lambda t: t == "x/a"  # noqa: E731

CASES: list[tuple[str, str, Expect]] = [
    ("01 no policy: all reachable", "", everything),
    ("02 NP default deny ingress in x", DENY_X, lambda s, t, p, pr: ns(t) != "x"),
    ("03 NP x/a from its own namespace", DENY_X + NP("a-from-x", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {}}]}]"""), lambda s, t, p, pr: ns(t) != "x" or (t == "x/a" and ns(s) == "x")),
    ("04 NP x/a from namespace y on tcp 80", NP("a-from-y", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}], ports: [{port: 80, protocol: TCP}]}]"""),
     lambda s, t, p, pr: t != "x/a" or (ns(s) == "y" and (p, pr) == (80, "tcp"))),
    ("05 NP namespaceSelector AND podSelector", NP("a-from-y-b", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: b}}}]}]"""),
     lambda s, t, p, pr: t != "x/a" or s == "y/b"),
    ("06 NP namespaceSelector OR podSelector", NP("a-from-y-or-b", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}, {podSelector: {matchLabels: {pod: b}}}]}]"""),
     lambda s, t, p, pr: t != "x/a" or ns(s) == "y" or s == "x/b"),
    ("07 NP ports without from: everyone on tcp 81", NP("a-81", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 81}]}]"""), lambda s, t, p, pr: t != "x/a" or (p, pr) == (81, "tcp")),
    ("08 NP ports by container-port name", NP("a-named", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-80}, {port: serve-udp, protocol: UDP}]}]"""), lambda s, t, p, pr: t != "x/a" or p == 80),
    ("09 NP endPort range 80-81 from x", NP("range", "x", """  podSelector: {}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 80, endPort: 81, protocol: TCP}]}]"""),
     lambda s, t, p, pr: ns(t) != "x" or (ns(s) == "x" and pr == "tcp")),
    ("10 NP matchExpressions NotIn", NP("not-c", "x", """  podSelector: {}
  ingress: [{from: [{podSelector: {matchExpressions: [{key: pod, operator: NotIn, values: [c]}]},
                     namespaceSelector: {}}]}]"""), lambda s, t, p, pr: ns(t) != "x" or (pod(s) != "c" and s != "world1")),
    ("11 NP egress deny all for x/a", NP("a-no-egress", "x", """  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]"""), lambda s, t, p, pr: s != "x/a"),
    ("12 NP egress x/a to namespace z on udp 80", NP("a-egress-z", "x", """  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 80, protocol: UDP}]}]"""),
     # no policyTypes: Ingress is always implied, so x/a is isolated for ingress too
     lambda s, t, p, pr: t != "x/a" and (s != "x/a" or (ns(t) == "z" and (p, pr) == (80, "udp")))),
    ("13 NP ipBlock ingress from the external network only", NP("a-from-world", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 198.51.100.0/24}}]}]"""), lambda s, t, p, pr: t != "x/a" or s == "world1"),
    ("14 NP ipBlock except excludes world1", NP("a-from-world", "x", """  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.10/32]}}]}]"""),
     lambda s, t, p, pr: t != "x/a"),
    ("15 NP egress ipBlock: x/a reaches world1, not pods", NP("a-to-world", "x", """  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]}]"""), lambda s, t, p, pr: s != "x/a" or t == "world1"),
    ("16 CNP fromEndpoints is namespace-scoped", CNP("a-from-b", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {pod: b}}]}]"""), lambda s, t, p, pr: t != "x/a" or s == "x/b"),
    ("17 CNP fromEndpoints naming another namespace", CNP("a-from-yc", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y, pod: c}}]}]"""),
     lambda s, t, p, pr: t != "x/a" or s == "y/c"),
    ("18 CNP toPorts ANY port 80 (tcp and udp)", CNP("a-any-80", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{toPorts: [{ports: [{port: "80", protocol: ANY}]}]}]"""), lambda s, t, p, pr: t != "x/a" or p == 80),
    ("19 CNP fromEntities world", CNP("a-world", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [world]}]"""), lambda s, t, p, pr: t != "x/a" or s == "world1"),
    ("20 CNP fromEntities cluster", CNP("a-cluster", "x", """  endpointSelector: {matchLabels: {pod: a}}
  ingress: [{fromEntities: [cluster]}]"""), lambda s, t, p, pr: t != "x/a" or s != "world1"),
    ("21 CNP egress toEntities world", CNP("a-to-world", "x", """  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEntities: [world]}]"""), lambda s, t, p, pr: s != "x/a" or t == "world1"),
    ("22 CNP ingressDeny wins over a NetworkPolicy allow-all", NP("allow-all", "x", """  podSelector: {}
  ingress: [{}]""") + CNP("deny-y", "x", """  endpointSelector: {}
  ingressDeny: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y}}]}]"""),
     lambda s, t, p, pr: ns(t) != "x" or ns(s) != "y"),
    ("23 CCNP egressDeny to world, default deny off", CCNP("no-world", """  endpointSelector: {}
  enableDefaultDeny: {egress: false}
  egressDeny: [{toEntities: [world]}]"""), lambda s, t, p, pr: t != "world1"),
    ("24 CNP empty egress rule: default deny egress", CNP("lockdown", "z", """  endpointSelector: {matchLabels: {pod: c}}
  egress: [{}]"""), lambda s, t, p, pr: s != "z/c"),
    ("25 both sides must allow: egress allowed, ingress denied", CNP("a-egress", "x", """  endpointSelector: {matchLabels: {pod: a}}
  egress: [{toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y}}]}]""") + NP("yb-closed", "y", """  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]"""), lambda s, t, p, pr: (s != "x/a" or ns(t) == "y") and t != "y/b"),
    ("26 CCNP: pods b everywhere take udp 80 from any pod", CCNP("b-udp", """  endpointSelector: {matchLabels: {pod: b}}
  ingress: [{fromEndpoints: [{}], toPorts: [{ports: [{port: "80", protocol: UDP}]}]}]"""),
     lambda s, t, p, pr: pod(t) != "b" or (s != "world1" and (p, pr) == (80, "udp"))),
]


@pytest.mark.parametrize("title,policies,expect", CASES, ids=[c[0][:2] for c in CASES])
def test_policy_matrix(lab: Lab, title: str, policies: str, expect: Expect) -> None:
    clear_policies()
    if policies:
        apply(policies)
    check(lab, expect)


def test_changes_replace_delete_relabel_pod_and_namespace(lab: Lab) -> None:
    clear_policies()
    policy = NP("a-from", "x", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]")
    apply(policy)
    check(lab, lambda s, t, p, pr: t != "x/a" or s == "x/b")
    apply(policy.replace("pod: b}}}", "pod: c}}}"))  # replace
    check(lab, lambda s, t, p, pr: t != "x/a" or s == "x/c")
    with api() as client:  # relabel pod x/b to pod=c: it now matches the rule
        (x_b,) = [o for o in client.get("/v1/resources", {"kind": "Pod", "namespace": "x"})
                  if o["metadata"]["name"] == "b"]
        x_b["metadata"]["labels"] = {"pod": "c"}
        client.apply(ApplyRequest(objects=[x_b]), wait=WAIT)
    try:
        check(lab, lambda s, t, p, pr: t != "x/a" or s in ("x/b", "x/c"))
    finally:
        x_b["metadata"]["labels"] = {"pod": "b"}
        with api() as client:
            client.apply(ApplyRequest(objects=[x_b]), wait=WAIT)
    apply(NP("a-from", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                            "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"))
    check(lab, lambda s, t, p, pr: t != "x/a" or ns(s) == "y")
    z = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "z", "labels": {"ns": "y"}}}
    with api() as client:  # relabel namespace z: its pods now match ns=y
        client.apply(ApplyRequest(objects=[z]), wait=WAIT)
    try:
        check(lab, lambda s, t, p, pr: t != "x/a" or ns(s) in ("y", "z"))
    finally:
        z["metadata"]["labels"] = {"ns": "z"}
        with api() as client:
            client.apply(ApplyRequest(objects=[z]), wait=WAIT)
    clear_policies()  # delete
    check(lab, everything)


def test_audit_mode_global_and_per_endpoint(lab: Lab) -> None:
    clear_policies()
    apply(DENY_X)
    with api() as client:
        client.patch("/v1/config", {"policy_audit_mode": True})
    check(lab, everything)  # would-be drops let through
    with api() as client:
        client.patch("/v1/config", {"policy_audit_mode": False})
        (x_a,) = [e for e in client.list_endpoints() if (e.pod_namespace, e.pod_name) == ("x", "a")]
        client.patch(f"/v1/endpoints/{x_a.id}/config", {"policy_audit_mode": True})
        audits = [r["flow"] for r in client.stream_lines("/v1/flows", {"last": 4000, "verdict": ["AUDIT"]})]
    try:
        check(lab, lambda s, t, p, pr: ns(t) != "x" or t == "x/a")
        assert audits and all(f["event_type"]["type"] == 5 for f in audits), "audit mode produced no AUDIT flows"
    finally:
        with api() as client:
            client.patch(f"/v1/endpoints/{x_a.id}/config", {"policy_audit_mode": None})


def test_enforcement_always_denies_without_policy(lab: Lab) -> None:
    clear_policies()
    with api() as client:
        client.patch("/v1/config", {"policy_enforcement": "always"})
        endpoints = client.list_endpoints()
    try:
        assert {(e.policy.ingress, e.policy.egress) for e in endpoints if e.policy} == {("enabled", "enabled")}
        check(lab, lambda s, t, p, pr: False)
    finally:
        clear_policies()
    check(lab, everything)


def test_host_is_allowed_into_pods_by_default_and_egress_to_host_follows_policy(lab: Lab) -> None:
    clear_policies()
    apply(DENY_X + CNP("a-host-only", "x", "  endpointSelector: {matchLabels: {pod: a}}\n"
                                           "  egress: [{toEntities: [host]}]"))
    node_ip = lab.state["nodes"]["n1"]["ipv4"]
    assert lab.probe("n1", "x/a", 80, timeout=2)["verdict"] == "connected"  # allow-localhost
    assert lab.probe("x/a", node_ip, 9, timeout=2)["verdict"] == "refused"  # host reached (no server: RST)
    assert lab.probe("x/b", "y/a", 80, timeout=2)["verdict"] == "connected"
    assert lab.probe("x/a", "y/a", 80, timeout=2)["verdict"] == "timed-out"


def test_ipv6_is_enforced_too(lab: Lab) -> None:
    clear_policies()
    apply(NP("a-from-b", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                              "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"))
    got = probe_rows(lab, {s: [Target("x/a", 80), Target("x/a", 80, "udp")] for s in ("x/b", "x/c", "y/b")},
                       timeout=1.0, ipv6=True)
    assert {k[0]: v for k, v in got.items() if k[3] == "tcp"} == {"x/b": True, "x/c": False, "y/b": False}
    assert {k[0]: v for k, v in got.items() if k[3] == "udp"} == {"x/b": True, "x/c": False, "y/b": False}


def _echo_client(lab: Lab, source: str, target: str) -> subprocess.Popen[str]:
    address = lab.address_of(target)
    script = (
        "import socket,sys\n"
        f"s=socket.create_connection(('{address}',80),timeout=3); s.recv(64)\n"
        "for line in sys.stdin:\n"
        "    try:\n"
        "        s.sendall(line.encode()); got=s.recv(64).decode()\n"
        "    except OSError:\n"
        "        got=''\n"
        "    print('ok' if got==line else 'cut', flush=True)\n"
    )
    return subprocess.Popen(in_netns(lab.netns_of(source), sys.executable, "-c", script),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _echo(client: subprocess.Popen[str], word: str) -> str:
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(word + "\n")
    client.stdin.flush()
    return client.stdout.readline().strip()


def test_established_connection_is_cut_by_a_new_deny(lab: Lab) -> None:
    """Chosen behaviour: policy is checked on every packet the initiator sends (replies ride on
    conntrack), so a policy that no longer allows a connection stops it at its next packet."""
    clear_policies()
    client = _echo_client(lab, "y/a", "x/a")
    try:
        assert _echo(client, "before") == "ok"
        apply(NP("a-from-b", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                  "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"))
        assert _echo(client, "after") == "cut"
    finally:
        client.kill()
        client.wait(timeout=10)


def test_agent_kill_9_with_policies_in_force(lab: Lab) -> None:
    """Allowed connections keep working and denied traffic stays denied while the agent is dead
    and after it restarted; the restarted agent changes nothing in the policy maps."""
    clear_policies()
    apply(DENY_X + NP("a-from-y", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                       "  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"))
    expect: Expect = lambda s, t, p, pr: ns(t) != "x" or (t == "x/a" and ns(s) == "y")  # noqa: E731
    client = _echo_client(lab, "y/b", "x/a")
    try:
        assert _echo(client, "before") == "ok"
        with api() as c:
            before = {e.id: c.get(f"/v1/bpf/policy/{e.id}") for e in c.list_endpoints()}
        pid = int(lab.state["nodes"]["n1"]["agent_pid"])
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        assert _echo(client, "agent-down") == "ok"
        check(lab, expect)  # enforced with no agent at all
        lab.restart_agent("n1", kill=False)
        assert _echo(client, "after") == "ok"
        with api() as c:
            after = {e.id: c.get(f"/v1/bpf/policy/{e.id}") for e in c.list_endpoints()}
        assert after == before  # same entries, same generation: nothing was rewritten
        check(lab, expect)
    finally:
        client.kill()
        client.wait(timeout=10)


def test_bad_policy_is_rejected_and_the_previous_one_stays(lab: Lab) -> None:
    clear_policies()
    good = NP("a-from-b", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                               "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]")
    apply(good)
    bad_versions = [
        (good.replace("pod: b}}}", "pod: b}}}], ports: [{port: 99999}"), "is out of range 1-65535"),
        (good.replace("{matchLabels: {pod: b}}", "{matchExpressions: [{key: pod, operator: Is}]}"),
         "is not one of In, NotIn, Exists, DoesNotExist"),
        (good.replace("podSelector: {matchLabels: {pod: b}}", "ipBlock: {cidr: 10.0.0.300/8}"), "not a valid CIDR"),
        (good.replace("ingress:", "ingresss:"), "unknown field"),
    ]
    for text, reason in bad_versions:
        with pytest.raises(AgentError) as raised:
            apply(text)
        assert "NetworkPolicy x/a-from-b" in str(raised.value) and reason in str(raised.value)
    check(lab, lambda s, t, p, pr: t != "x/a" or s == "x/b")  # the good version is still enforced


def test_drops_name_their_policy_and_trace_agrees(lab: Lab) -> None:
    clear_policies()
    apply(NP("allow-all", "x", "  podSelector: {}\n  ingress: [{}]") + CNP("deny-y", "x", """  endpointSelector: {}
  ingressDeny: [{fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: y}}], toPorts: [{ports: [{port: "81"}]}]}]"""))
    assert lab.probe("y/a", "x/b", 81, timeout=1)["verdict"] == "timed-out"
    with api() as client:
        flows: list[dict[str, Any]] = wait_for(
            lambda: [r["flow"] for r in client.stream_lines("/v1/flows", {"last": 500, "verdict": ["DROPPED"],
                                                                         "policy": ["x/deny-y"]})],
            10, 0.2, "no drop flow attributed to x/deny-y")
        trace = client.post("/v1/policy/trace", {"src_pod": "y/a", "dst_pod": "x/b", "dport": 81, "protocol": "TCP"})
        allowed = client.post("/v1/policy/trace", {"src_pod": "y/a", "dst_pod": "x/b", "dport": 80, "protocol": "TCP"})
    flow = flows[-1]
    assert flow["drop_reason_desc"] == "POLICY_DENY"
    assert flow["ingress_denied_by"][0]["name"] == "deny-y"
    assert flow["policy_decision"] == "CiliumNetworkPolicy/x/deny-y ingressDeny[0]"
    assert trace["verdict"] == "DENIED" and trace["ingress"]["decided_by"] == flow["policy_decision"]
    assert allowed["verdict"] == "ALLOWED" and lab.probe("y/a", "x/b", 80, timeout=2)["verdict"] == "connected"


CILIA = os.path.join(os.path.dirname(sys.executable), "cilia")


def test_apply_wait_returns_the_revision_and_the_policy_is_enforced_after_it(lab: Lab, tmp_path: Any) -> None:
    """`cilia apply --wait` prints the revision it produced and returns once every endpoint has it:
    a probe right after sees the policy. Only the endpoint the policy selects was regenerated
    (its state went regenerating -> ready, 'policy installed'); the others kept their state."""
    clear_policies()
    with api() as client:
        before = {e.id: (e.state, e.state_reason) for e in client.list_endpoints()}
    manifest = tmp_path / "a-from-b.yaml"
    manifest.write_text(NP("a-from-b", "x", "  podSelector: {matchLabels: {pod: a}}\n"
                                            "  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"))
    result = subprocess.run([CILIA, "apply", "--node", "n1", "-f", str(manifest), "--wait"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    found = re.search(r"^policy revision (\d+)$", result.stdout, re.MULTILINE)
    assert found, result.stdout
    revision = int(found.group(1))
    assert f"policy revision {revision} enforced on every endpoint" in result.stdout
    assert lab.probe("y/a", "x/a", 80, timeout=1.0)["verdict"] != "connected"
    assert lab.probe("x/b", "x/a", 80)["verdict"] == "connected"
    waited = subprocess.run([CILIA, "policy", "wait", "--node", "n1", "--revision", str(revision), "--timeout", "5"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert waited.returncode == 0 and f"policy revision {revision} enforced" in waited.stdout, waited.stderr
    with api() as client:
        assert not client.wait_policy(revision + 1000, 0.2).reached  # a revision nobody produced yet
        endpoints = {f"{e.pod_namespace}/{e.pod_name}": e for e in client.list_endpoints()}
    x_a = endpoints["x/a"]
    assert (x_a.state.value, x_a.state_reason) == ("ready", "policy installed")
    assert x_a.policy is not None and x_a.policy.ingress == "enabled"
    assert {e.id: (e.state, e.state_reason) for e in endpoints.values() if e.id != x_a.id} == \
        {i: s for i, s in before.items() if i != x_a.id}
    listing = subprocess.run([CILIA, "endpoint", "list", "--node", "n1"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert listing.returncode == 0 and "STATE" in listing.stdout and "ready" in listing.stdout
    clear_policies()
