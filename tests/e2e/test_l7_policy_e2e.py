"""L7 HTTP policy on the lab through cilia-proxy: Cilium's Star Wars example and more.

Only `POST /v1/request-landing` from org=empire pods reaches the deathstar; `PUT /v1/exhaust-port`
gets 403 `Access denied` and never reaches the server (its own log says so); an alliance pod
cannot connect at all. Method / path / header / host rules, ingress and egress L7 rules on one
pod, keep-alive and pipelining with allowed and denied requests mixed, deny precedence, audit
mode, real addresses on both sides; the proxy down (dropped as `proxy unavailable`, the rest
unaffected), the agent kill -9'd (open proxied connections keep working), the proxy worker
kill -9'd (new connections within a second)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cilia.api.client import AgentClient, AgentError
from cilia.api.models import ApplyRequest
from cilia.lab.lab import PYTHON, Lab
from cilia.lab.process import in_netns
from cilia.paths import NodePaths
from cilia.testing import wait_for
from cilia.testing.labs import running_lab

SERVERS = ("deathstar", "api", "relay", "xwing")
TOPOLOGY = {
    "nodes": [{"name": "n1", "podCIDRv4": "10.200.1.0/24", "podCIDRv6": "fd00:200:1::/64"}],
    "namespaces": [],
    "pods": [
        {"name": "deathstar", "namespace": "default", "labels": {"org": "empire", "class": "deathstar"}},
        {"name": "tiefighter", "namespace": "default", "labels": {"org": "empire", "class": "tiefighter"}},
        {"name": "xwing", "namespace": "default", "labels": {"org": "alliance", "class": "xwing"}},
        {"name": "api", "namespace": "default", "labels": {"app": "api"}},
        {"name": "relay", "namespace": "default", "labels": {"org": "empire", "class": "relay"}},
        {"name": "greeter", "namespace": "default", "labels": {"app": "greeter"}},
    ],
    "externals": [],
}
POLICIES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  description: "L7 policy to restrict access to specific HTTP call"
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: "POST", path: "/v1/request-landing"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api-rules, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: "GET", path: "/public/.*"}
        - {method: "GET", path: "/private", headers: ["X-Token: abc"]}
        - {host: "api\\\\.example\\\\.test", path: "/h"}
        - method: GET
          path: /hm
          headerMatches:
          - {name: X-Token, value: abc}
          - {name: X-Env, value: prod, mismatch: REPLACE}
          - {name: X-Trace, mismatch: LOG}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: relay-rules, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: relay}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: "GET", path: "/in"}]}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: "POST", path: "/v1/request-landing"}, {method: "GET", path: "/v1/status"}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: greeter-rules, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: greeter}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: tiefighter}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: "POST", path: "/demo\\\\.Greeter/Hello"}]}
"""
DENY_TIEFIGHTER = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "no-tiefighters", "namespace": "default"},
    "spec": {"endpointSelector": {"matchLabels": {"class": "deathstar"}},
             "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"class": "tiefighter"}}]}]},
}
SERVER = textwrap.dedent("""
    import sys, socket, http.server
    log = open(sys.argv[1], "a", buffering=1)
    body = sys.argv[2].encode() + b"\\n"
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def _any(self):
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            env = f" X-Env={self.headers['X-Env']}" if "X-Env" in self.headers else ""
            log.write(f"{self.command} {self.path} {self.client_address[0]}{env}\\n")
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        do_GET = do_POST = do_PUT = _any
        def log_message(self, *a): pass
    class Server6(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6
        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            super().server_bind()
    v6 = len(sys.argv) > 3
    s = (Server6 if v6 else http.server.ThreadingHTTPServer)(("::" if v6 else "0.0.0.0", 80), H)
    s.daemon_threads = True
    log.write("ready\\n")
    s.serve_forever()
""")
CLIENT = textwrap.dedent("""
    import sys, json, http.client
    conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=3)
    out = []
    try:
        for method, path, headers in json.loads(sys.argv[2]):
            conn.request(method, path, body=b"" if method != "GET" else None, headers=headers)
            r = conn.getresponse()
            out.append([r.status, r.read().decode(), conn.sock.getpeername()[0], conn.sock.getsockname()[1]])
    except OSError as e:
        out.append(["error", str(e)])
    print(json.dumps(out))
""")
# a gRPC server (h2c): every method answers, and logs that it was called
GRPC_SERVER = textwrap.dedent("""
    import sys, grpc
    from concurrent import futures
    log = open(sys.argv[1], "a", buffering=1)
    class H(grpc.GenericRpcHandler):
        def service(self, details):
            method = details.method
            def answer(request, ctx):
                log.write(f"{method}\\n")
                return b"hello " + request
            return grpc.unary_unary_rpc_method_handler(answer)
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    s.add_generic_rpc_handlers((H(),))
    s.add_insecure_port("0.0.0.0:80")
    s.start()
    log.write("ready\\n")
    s.wait_for_termination()
""")
GRPC_CLIENT = textwrap.dedent("""
    import sys, json, grpc, httpx
    out = []
    with grpc.insecure_channel(sys.argv[1] + ":80", options=[("grpc.enable_http_proxy", 0)]) as ch:
        for method in json.loads(sys.argv[2]):
            try:
                out.append(["OK", ch.unary_unary(method)(b"x", timeout=5).decode()])
            except grpc.RpcError as e:
                out.append([e.code().name, e.details()])
    # plain HTTP/2 with prior knowledge (httpx + h2): the denied stream's answer as it is
    with httpx.Client(http1=False, http2=True, trust_env=False, timeout=5) as c:
        r = c.post(f"http://{sys.argv[1]}/demo.Greeter/Secret", content=b"")
        out.append([r.http_version, r.status_code, r.text])
    print(json.dumps(out))
""")
# raw pipelining: every request in one write, then the answers read in order until the proxy closes
PIPELINE = textwrap.dedent("""
    import sys, socket
    s = socket.create_connection((sys.argv[1], 80), timeout=3)
    s.sendall(sys.argv[2].encode().replace(b"|", b"\\r\\n"))
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    sys.stdout.write(data.decode())
""")
# a long-lived client: N keep-alive connections, driven by commands on stdin (one JSON line each)
HOLDER = textwrap.dedent("""
    import sys, json, time, http.client
    target, n = sys.argv[1], int(sys.argv[2])
    conns = [http.client.HTTPConnection(target, 80, timeout=3) for _ in range(n)]
    def call(conn, method, path):
        try:
            conn.request(method, path, body=b"")
            r = conn.getresponse()
            return [r.status, r.read().decode(), conn.sock.getsockname()[1]]
        except OSError as e:
            return ["error", str(e), 0]
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "round":
            out = [[call(c, m, p) for m, p in cmd["calls"]] for c in conns]
        else:  # "new": a fresh connection, retried until it answers or the deadline passes
            start, out = time.monotonic(), None
            while time.monotonic() - start < cmd["deadline"]:
                r = call(http.client.HTTPConnection(target, 80, timeout=cmd["deadline"]), "POST", "/v1/request-landing")
                if r[0] == 200:
                    out = time.monotonic() - start
                    break
                time.sleep(0.02)
        print(json.dumps(out), flush=True)
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(TOPOLOGY) as running:
        logs = tmp_path_factory.mktemp("servers")
        os.chmod(logs, 0o755)
        servers = []
        try:
            for name in (*SERVERS, "greeter"):
                log = logs / f"{name}.log"
                log.touch()
                body = "Ship landed" if name == "deathstar" else name
                script = GRPC_SERVER if name == "greeter" else SERVER
                servers.append(subprocess.Popen(in_netns(running.netns_of(name), PYTHON, "-c", script, str(log), body),
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
                wait_for(lambda log=log: "ready" in log.read_text(), 10, 0.1, f"the {name} server did not start")
                running.state[f"{name}_log"] = str(log)
            # the deathstar answers on IPv6 too (its own server, the same log)
            log = logs / "deathstar.log"
            servers.append(subprocess.Popen(in_netns(running.netns_of("deathstar"), PYTHON, "-c", SERVER, str(log),
                                                     "Ship landed", "6"),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
            wait_for(lambda: log.read_text().count("ready") == 2, 10, 0.1, "the deathstar's IPv6 server did not start")
            with AgentClient(NodePaths("n1").socket) as client:
                client.apply(ApplyRequest(objects=list(yaml.safe_load_all(POLICIES))), wait=30)
            yield running
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
                server.wait(5)


Call = tuple[str, str] | tuple[str, str, dict[str, str]]


def requests(lab: Lab, source: str, calls: list[Call], target: str = "deathstar",
             ipv6: bool = False) -> list[list[Any]]:
    full = [[c[0], c[1], c[2] if len(c) > 2 else {}] for c in calls]  # type: ignore[misc]
    address = lab.address_of(target, ipv6=ipv6)
    out = subprocess.run(in_netns(lab.netns_of(source), PYTHON, "-c", CLIENT, address,
                                  json.dumps(full)), capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def statuses(lab: Lab, source: str, calls: list[Call], target: str = "deathstar") -> list[Any]:
    return [r[0] for r in requests(lab, source, calls, target)]


def server_log(lab: Lab, name: str = "deathstar") -> list[str]:
    return [line for line in Path(lab.state[f"{name}_log"]).read_text().splitlines() if line != "ready"]


def proxy_log() -> str:
    return (NodePaths("n1").run_dir / "proxy.log").read_text()


def api() -> AgentClient:
    return AgentClient(NodePaths("n1").socket)


def test_landing_allowed_exhaust_port_denied_on_one_keepalive_connection(lab: Lab) -> None:
    before = len(server_log(lab))
    result = requests(lab, "tiefighter", [("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port"),
                                          ("POST", "/v1/request-landing")])
    assert [r[:2] for r in result] == [[200, "Ship landed\n"], [403, "Access denied"], [200, "Ship landed\n"]]
    # one connection throughout, and the client saw the deathstar's own address
    assert {r[3] for r in result} == {result[0][3]}
    assert {r[2] for r in result} == {lab.address_of("deathstar")}
    seen = server_log(lab)[before:]
    # the denied request never reached the server, which saw the tiefighter's own address
    assert seen == [f"POST /v1/request-landing {lab.address_of('tiefighter')}"] * 2


def test_ipv6_the_same_rules_real_addresses_on_both_sides(lab: Lab) -> None:
    before = len(server_log(lab))
    result = requests(lab, "tiefighter", [("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port")], ipv6=True)
    assert [r[:2] for r in result] == [[200, "Ship landed\n"], [403, "Access denied"]]
    assert result[0][2] == lab.address_of("deathstar", ipv6=True)
    assert server_log(lab)[before:] == [f"POST /v1/request-landing {lab.address_of('tiefighter', ipv6=True)}"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/request-landing"), ("POST", "/v1/request-landing/x"),
                                              ("POST", "/v1/request-landingX"), ("PUT", "/v1/exhaust-port")])
def test_anchored_rule_denies_near_misses(lab: Lab, method: str, path: str) -> None:
    before = len(server_log(lab))
    assert [r[:2] for r in requests(lab, "tiefighter", [(method, path)])] == [[403, "Access denied"]]
    assert server_log(lab)[before:] == []


def test_alliance_cannot_connect_at_all(lab: Lab) -> None:
    result = requests(lab, "xwing", [("POST", "/v1/request-landing")])
    assert result[0][0] == "error"
    assert server_log(lab)[-1:] != [f"POST /v1/request-landing {lab.address_of('xwing')}"]


def test_method_path_header_and_host_rules(lab: Lab) -> None:
    before = len(server_log(lab, "api"))
    calls: list[tuple[Call, int]] = [
        (("GET", "/public/a"), 200), (("GET", "/public/"), 200), (("POST", "/public/a"), 403),
        (("GET", "/publicX"), 403), (("GET", "/private"), 403), (("GET", "/private", {"X-Token": "abc"}), 200),
        (("GET", "/private", {"X-Token": "abd"}), 403), (("GET", "/h", {"Host": "api.example.test"}), 200),
        (("PUT", "/h", {"Host": "api.example.test"}), 200), (("GET", "/h", {"Host": "other.example.test"}), 403),
        (("GET", "/h", {"Host": "apiXexample.test"}), 403),
    ]
    assert statuses(lab, "tiefighter", [c for c, _ in calls], "api") == [s for _, s in calls]
    allowed = [f"{c[0]} {c[1]} {lab.address_of('tiefighter')}" for c, s in calls if s == 200]
    assert server_log(lab, "api")[before:] == allowed
    # the rules are the tiefighter's only: another empire pod cannot connect at all
    assert statuses(lab, "relay", [("GET", "/public/a")], "api") == ["error"]


def test_header_matches_deny_replace_and_log(lab: Lab) -> None:
    before = len(server_log(lab, "api"))
    calls: list[Call] = [("GET", "/hm", {"X-Token": "abc", "X-Env": "dev"}), ("GET", "/hm", {"X-Env": "prod"}),
                         ("GET", "/hm", {"X-Token": "abc", "X-Env": "prod", "X-Trace": "1"})]
    assert statuses(lab, "tiefighter", calls, "api") == [200, 403, 200]
    client = lab.address_of("tiefighter")
    # REPLACE set the header on the way; the request without X-Token (no mismatch action) was denied
    assert server_log(lab, "api")[before:] == [f"GET /hm {client} X-Env=prod"] * 2
    wait_for(lambda: "headerMatches mismatch X-Env (REPLACE), X-Trace (LOG)" in proxy_log(), 5, 0.1,
             "the proxy did not log the mismatches")


def test_ingress_and_egress_l7_rules_on_the_same_pod(lab: Lab) -> None:
    relay_before, ds_before = len(server_log(lab, "relay")), len(server_log(lab))
    # the relay's ingress rules judge the tiefighter's requests
    assert statuses(lab, "tiefighter", [("GET", "/in"), ("GET", "/out"), ("GET", "/in")], "relay") == [200, 403, 200]
    assert server_log(lab, "relay")[relay_before:] == [f"GET /in {lab.address_of('tiefighter')}"] * 2
    # its egress rules judge its own requests, and the deathstar's ingress rules judge them too
    result = requests(lab, "relay", [("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port"),
                                     ("GET", "/v1/status"), ("GET", "/other")])
    assert [r[:2] for r in result] == [[200, "Ship landed\n"], [403, "Access denied"], [403, "Access denied"],
                                       [403, "Access denied"]]
    assert server_log(lab)[ds_before:] == [f"POST /v1/request-landing {lab.address_of('relay')}"]
    # egress default deny: the relay reaches nothing else
    assert statuses(lab, "relay", [("GET", "/")], "xwing") == ["error"]


def test_the_proxy_rules_the_agent_writes_name_the_policies(lab: Lab) -> None:
    with api() as client:
        ids = {e.pod_name: e.id for e in client.list_endpoints()}
    rules = json.loads((NodePaths("n1").proxy_policy_dir / f"{ids['deathstar']}.json").read_text())
    assert [e["policy"] for e in rules["ingress"]] == [
        {"kind": "CiliumNetworkPolicy", "namespace": "default", "name": "rule1"}]
    relay = json.loads((NodePaths("n1").proxy_policy_dir / f"{ids['relay']}.json").read_text())
    assert {e["policy"]["name"] for e in relay["ingress"] + relay["egress"]} == {"relay-rules"}
    assert not (NodePaths("n1").proxy_policy_dir / f"{ids['xwing']}.json").exists()  # no L7 rules


def test_pipelined_requests_are_judged_one_by_one_in_order(lab: Lab) -> None:
    before = len(server_log(lab))
    landing = "POST /v1/request-landing HTTP/1.1|Host: deathstar|Content-Length: 0||"
    exhaust = "PUT /v1/exhaust-port HTTP/1.1|Host: deathstar|Content-Length: 0||"
    last = "PUT /v1/exhaust-port HTTP/1.1|Host: deathstar|Content-Length: 0|Connection: close||"
    out = subprocess.run(in_netns(lab.netns_of("tiefighter"), PYTHON, "-c", PIPELINE, lab.address_of("deathstar"),
                                  landing + exhaust + landing + last),
                         capture_output=True, text=True, timeout=30, check=True).stdout
    codes = re.findall(r"HTTP/1\.1 (\d{3}) ", out)
    assert codes == ["200", "403", "200", "403"]
    assert out.count("Ship landed") == 2 and out.count("Access denied") == 2
    assert server_log(lab)[before:] == [f"POST /v1/request-landing {lab.address_of('tiefighter')}"] * 2


def test_http2_grpc_methods_judged_per_stream(lab: Lab) -> None:
    before = len(server_log(lab, "greeter"))
    calls = ["/demo.Greeter/Hello", "/demo.Greeter/Secret", "/demo.Greeter/Hello", "/demo.Greeter/HelloX"]
    out = subprocess.run(in_netns(lab.netns_of("tiefighter"), PYTHON, "-c", GRPC_CLIENT, lab.address_of("greeter"),
                                  json.dumps(calls)), capture_output=True, text=True, timeout=60, check=True).stdout
    result = json.loads(out)
    assert result[:4] == [["OK", "hello x"], ["PERMISSION_DENIED", result[1][1]], ["OK", "hello x"],
                          ["PERMISSION_DENIED", result[3][1]]]
    assert result[4] == ["HTTP/2", 403, "Access denied"]
    assert server_log(lab, "greeter")[before:] == ["/demo.Greeter/Hello"] * 2


@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"path": "/v1/(unclosed"}, "rules.http[0].path", "invalid regular expression"),
    ({"verb": "PUT"}, "rules.http[0].verb", "unknown field"),
    ({"headers": ["bad header: x"]}, "rules.http[0].headers[0]", "header name"),
])
def test_bad_l7_rules_are_rejected_and_the_previous_policy_stays(lab: Lab, change: dict[str, Any], field: str,
                                                                 reason: str) -> None:
    bad = next(yaml.safe_load_all(POLICIES))
    bad["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"][0].update(change)
    with api() as client, pytest.raises(AgentError) as raised:
        client.apply(ApplyRequest(objects=[bad]), wait=30)
    text = str(raised.value)
    assert "CiliumNetworkPolicy default/rule1" in text and field in text and reason in text, text
    assert statuses(lab, "tiefighter", [("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port")]) == [200, 403]


def test_deny_policy_wins_over_the_l7_allow(lab: Lab) -> None:
    with api() as client:
        client.apply(ApplyRequest(objects=[DENY_TIEFIGHTER]), wait=30)
    try:
        before = len(server_log(lab))
        assert statuses(lab, "tiefighter", [("POST", "/v1/request-landing")]) == ["error"]
        assert server_log(lab)[before:] == []
    finally:
        with api() as client:
            client.delete(ApplyRequest(objects=[DENY_TIEFIGHTER]), wait=30)
    assert statuses(lab, "tiefighter", [("POST", "/v1/request-landing")]) == [200]


def test_audit_mode_forwards_what_l7_rules_would_deny_and_reports_it(lab: Lab) -> None:
    with api() as client:
        (deathstar,) = [e for e in client.list_endpoints() if e.pod_name == "deathstar"]
        client.patch(f"/v1/endpoints/{deathstar.id}/config", {"policy_audit_mode": True})
    try:
        wait_for(lambda: statuses(lab, "tiefighter", [("GET", "/v1/audit-probe")]) == [200], 15, 0.3,
                 "audit mode did not let the denied request through")
        before = len(server_log(lab))
        assert statuses(lab, "tiefighter", [("PUT", "/v1/exhaust-port"), ("POST", "/v1/request-landing")]) == [200, 200]
        assert server_log(lab)[before:] == [f"PUT /v1/exhaust-port {lab.address_of('tiefighter')}",
                                            f"POST /v1/request-landing {lab.address_of('tiefighter')}"]
        wait_for(lambda: "AUDIT PUT http://" in proxy_log(), 5, 0.1, "the proxy did not report the AUDIT request")
        assert "AUDIT POST" not in proxy_log()
    finally:
        with api() as client:
            client.patch(f"/v1/endpoints/{deathstar.id}/config", {"policy_audit_mode": None})
    wait_for(lambda: statuses(lab, "tiefighter", [("PUT", "/v1/exhaust-port")]) == [403], 15, 0.3,
             "audit mode off did not deny again")


def _drop_flows() -> list[dict[str, Any]]:
    with api() as client:
        return [r["flow"] for r in client.stream_lines("/v1/flows", {"last": 4000, "verdict": ["DROPPED"]})]


def test_proxy_down_drops_l7_traffic_as_proxy_unavailable_and_the_rest_is_unaffected(lab: Lab) -> None:
    lab.stop_proxy("n1")
    try:
        before = len(server_log(lab))
        result = requests(lab, "tiefighter", [("POST", "/v1/request-landing")])
        assert result[0][0] == "error", "traffic an L7 rule covers passed without the proxy"
        assert server_log(lab)[before:] == []
        drops = [f for f in _drop_flows() if f.get("drop_reason_desc") == "PROXY_UNAVAILABLE"]
        assert drops, "no flow says proxy unavailable"
        assert drops[-1]["IP"]["source"] == lab.address_of("tiefighter")
        # traffic no L7 rule covers goes on as before
        assert [r[:2] for r in requests(lab, "tiefighter", [("GET", "/")], "xwing")] == [[200, "xwing\n"]]
    finally:
        lab.start_proxy("n1")
    assert [r[:2] for r in requests(lab, "tiefighter", [("POST", "/v1/request-landing")])] == [[200, "Ship landed\n"]]


class Holder:
    """HOLDER in the tiefighter's netns: `n` keep-alive connections to the deathstar."""

    def __init__(self, lab: Lab, n: int) -> None:
        self.proc = subprocess.Popen(in_netns(lab.netns_of("tiefighter"), PYTHON, "-c", HOLDER,
                                              lab.address_of("deathstar"), str(n)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def command(self, cmd: dict[str, Any]) -> Any:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def round(self) -> list[list[list[Any]]]:
        return self.command({"op": "round", "calls": [["POST", "/v1/request-landing"], ["PUT", "/v1/exhaust-port"]]})  # type: ignore[no-any-return]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def test_agent_kill9_and_restart_keeps_open_proxied_connections(lab: Lab) -> None:
    n = 5
    holder = Holder(lab, n)
    try:
        first = holder.round()
        assert [[r[0] for r in conn] for conn in first] == [[200, 403]] * n
        lab.restart_agent("n1", kill=True)
        second = holder.round()
        kept = sum(1 for a, b in zip(first, second, strict=True)
                   if [r[0] for r in b] == [200, 403] and b[0][2] == a[0][2])  # same local port: same connection
        assert kept == n, f"only {kept} of {n} proxied keep-alive connections survived the agent's kill -9: {second}"
    finally:
        holder.close()


def test_proxy_worker_kill9_new_connections_within_a_second(lab: Lab) -> None:
    holder = Holder(lab, 2)
    try:
        assert [[r[0] for r in conn] for conn in holder.round()] == [[200, 403]] * 2
        pid = int((NodePaths("n1").run_dir / "proxy.pid").read_text())
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        took = holder.command({"op": "new", "deadline": 5.0})
        since_kill = time.monotonic() - killed
        print(f"new connection answered {took:.3f} s after the request, {since_kill:.3f} s after kill -9")
        assert took is not None and since_kill < 1.0, f"new connection after {since_kill:.3f} s"
        wait_for(lambda: int((NodePaths("n1").run_dir / "proxy.pid").read_text()) != pid, 5, 0.05,
                 "no new proxy worker")
        # the old worker's connections are gone (in flight when it died); new ones work
        assert statuses(lab, "tiefighter", [("POST", "/v1/request-landing"), ("PUT", "/v1/exhaust-port")]) == [200, 403]
    finally:
        holder.close()


