"""DNS rules and toFQDNs on the lab, against a real dnsmasq (cilia.lab.dns, `dns: true`).

The client pod may ask the lab's resolver for `*.example.test` and `**.cdn.example.test` names
(anything else: REFUSED by the DNS proxy, never forwarded) and may connect on TCP 80 to what
`api.example.test`, `*.cdn.example.test` and `short.example.test` resolve to. Its first connection
right after a lookup is already allowed (the DNS proxy writes the ipcache before it answers); an
allowed name outside toFQDNs (`other.example.test`) resolves but its address stays unreachable.
TTL expiry removes an address unless a connection to it is open; the agent killed with -9 in
the middle changes nothing for DNS and open connections. Queries to the resolver's IPv6 address
(UDP and TCP) are proxied the same way, and AAAA answers allow their addresses as A answers do.
Flows to an address a lookup named carry the names (Hubble's destination_names), and
`cilia observe --to-fqdn` finds them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from cilia.api.client import AgentClient
from cilia.api.models import ApplyRequest
from cilia.identity.fqdn import read_sets
from cilia.lab.lab import PYTHON, Lab
from cilia.lab.process import exited, in_netns
from cilia.paths import NodePaths
from cilia.policy.engine import fqdn_identities_file
from cilia.testing import wait_for
from cilia.testing.labs import running_lab

RESOLVER = "198.51.100.53"
RESOLVER6 = "2001:db8:100::35"
API6 = "2001:db8:100::a"  # api.example.test's AAAA: web0's IPv6 address
TOPOLOGY = {
    "nodes": [{"name": "n1", "podCIDRv4": "10.200.1.0/24", "podCIDRv6": "fd00:200:1::/64"}],
    "namespaces": [],
    "pods": [{"name": "client", "namespace": "default", "labels": {"app": "client"}},
             {"name": "free", "namespace": "default", "labels": {"app": "free"}}],
    # externals[i] is 198.51.100.(10+i): the zone's addresses (cilia.lab.dns)
    "externals": [{"name": f"web{i}", "ports": [{"port": 80}]} for i in range(5)],
    "dns": True,
}
POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: fqdn, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toCIDR: [{RESOLVER}/32, "{RESOLVER6}/128"]
    toPorts:
    - ports: [{{port: "53", protocol: ANY}}]
      rules:
        dns: [{{matchPattern: "*.example.test"}}, {{matchPattern: "**.cdn.example.test"}}]
  - toFQDNs: [{{matchName: api.example.test}}, {{matchPattern: "*.cdn.example.test"}},
              {{matchName: short.example.test}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
  # api.example.test matches this one too: its addresses need the identity of both selectors,
  # which the agent allocated with the policy (one name matches both)
  - toFQDNs: [{{matchPattern: "api.*.test"}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
"""
# resolve, then at once connect to every address (or hold one connection open while told to)
CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    import dns.message, dns.query, dns.rcode, dns.rdatatype
    name, proto, connect, hold = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
    resolver, rdtype = sys.argv[5], sys.argv[6]
    q = dns.message.make_query(name, rdtype)
    try:
        if proto == "tcp":
            r = dns.query.tcp(q, resolver, timeout=3)
        else:
            r = dns.query.udp(q, resolver, timeout=3)
    except Exception as e:
        print(json.dumps({"error": repr(e)})); sys.exit(0)
    wanted = dns.rdatatype.from_text(rdtype)
    ips = [rd.address for rrset in r.answer if rrset.rdtype == wanted for rd in rrset]
    out = {"rcode": dns.rcode.to_text(r.rcode()), "ips": ips, "connect": {}}
    held = []
    for ip in ips if connect else []:
        s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        s.settimeout(1.5)
        try:
            s.connect((ip, 80)); out["connect"][ip] = (s.recv(100).decode().split() or ["closed"])[0]
            held.append(s)
        except OSError as e:
            out["connect"][ip] = "failed: " + type(e).__name__
    print(json.dumps(out), flush=True)
    if hold:
        time.sleep(hold)
        for s in held:
            try:
                s.sendall(b"again\\n"); out = (s.recv(100).decode().split() or ["closed"])[-1]
            except OSError as e:
                out = "failed: " + type(e).__name__
            print(json.dumps({"after_hold": out}), flush=True)
""")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab(TOPOLOGY) as running:
        with AgentClient(NodePaths("n1").socket) as client:
            client.apply(ApplyRequest(objects=[yaml.safe_load(POLICY)]), wait=30)
        yield running


def client_args(name: str, proto: str, connect: bool, hold: float, resolver: str = RESOLVER,
                rdtype: str = "A") -> list[str]:
    return ["-c", CLIENT, name, proto, "1" if connect else "0", str(hold), resolver, rdtype]


def lookup(lab: Lab, name: str, proto: str = "udp", connect: bool = True, pod: str = "client",
           resolver: str = RESOLVER, rdtype: str = "A") -> dict[str, Any]:
    out = subprocess.run(in_netns(lab.netns_of(pod), PYTHON, *client_args(name, proto, connect, 0, resolver, rdtype)),
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout.splitlines()[0])  # type: ignore[no-any-return]


def probe_ip(lab: Lab, ip: str) -> str:
    out = subprocess.run(in_netns(lab.netns_of("client"), PYTHON, "-m", "cilia.lab.probe", "--to", ip, "--port", "80",
                                  "--protocol", "tcp", "--timeout", "1"), capture_output=True, text=True, timeout=30)
    return str(json.loads(out.stdout.strip().splitlines()[-1])["verdict"])


def fqdn_cache(name: str = "") -> list[dict[str, Any]]:
    with AgentClient(NodePaths("n1").socket) as client:
        return client.get("/v1/fqdn/cache", params={"name": name} if name else None)  # type: ignore[no-any-return]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_first_connection_after_lookup_is_allowed(lab: Lab, proto: str) -> None:
    result = lookup(lab, "api.example.test", proto)
    assert result["rcode"] == "NOERROR" and sorted(result["ips"]) == ["198.51.100.10", "198.51.100.11"]
    assert result["connect"] == {"198.51.100.10": "web0", "198.51.100.11": "web1"}, result
    # the agent allocated the identity of the two selectors api.example.test matches (with the policy)
    sets = read_sets(fqdn_identities_file(NodePaths("n1").state_dir))
    assert frozenset({"matchName:api.example.test.", "matchPattern:api.*.test."}) in sets


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_queries_over_ipv6_are_proxied_and_aaaa_answers_allow(lab: Lab, proto: str) -> None:
    result = lookup(lab, "api.example.test", proto, resolver=RESOLVER6, rdtype="AAAA")
    assert result["rcode"] == "NOERROR" and result["ips"] == [API6], result
    assert result["connect"] == {API6: "web0"}, result  # allowed right after the AAAA answer
    # the proxy judged it: dnsmasq itself answers NXDOMAIN for a name it does not have
    refused = lookup(lab, "x.y.example.test", proto, connect=False, resolver=RESOLVER6)
    assert refused["rcode"] == "REFUSED", refused
    wait_for(lambda: API6 in {r["ip"] for r in fqdn_cache("api.example.test")}, 5, 0.2,  # saved every second
             "the AAAA answer's address is not in the name cache")
    # an A question over IPv6 transport: the same answers as over IPv4
    v4 = lookup(lab, "img.cdn.example.test", proto, resolver=RESOLVER6)
    assert v4["ips"] == ["198.51.100.12"] and v4["connect"] == {"198.51.100.12": "web2"}, v4


def test_flows_to_a_looked_up_address_carry_its_names(lab: Lab) -> None:
    assert lookup(lab, "www.example.test")["connect"] == {"198.51.100.10": "web0", "198.51.100.11": "web1"}
    cilia = str(PYTHON).replace("/python", "/cilia")

    def named() -> list[dict[str, Any]]:
        out = subprocess.run([cilia, "observe", "--node", "n1", "--to-fqdn", "www.example.test", "-o", "json",
                              "--last", "200"], capture_output=True, text=True, timeout=30, check=True)
        return [json.loads(line)["flow"] for line in out.stdout.splitlines() if line.strip()]
    wait_for(lambda: any(f.get("IP", {}).get("destination") == "198.51.100.10" for f in named()), 10, 0.5,
             "no flow to www.example.test's address carries its name")
    flows = [f for f in named() if f.get("IP", {}).get("destination") in ("198.51.100.10", "198.51.100.11")]
    # the query and its CNAME chain (www -> api), in the client's DNS history, without trailing dots
    assert all({"www.example.test", "api.example.test"} <= set(f["destination_names"]) for f in flows), flows
    assert all(f["source"].get("pod_name") == "client" for f in flows)
    # the replies name their source the same way (the client is the destination endpoint then)
    replies = subprocess.run([cilia, "observe", "--node", "n1", "--from-fqdn", "www.example.test", "-o", "json",
                              "--last", "200"], capture_output=True, text=True, timeout=30, check=True)
    back = [json.loads(line)["flow"] for line in replies.stdout.splitlines() if line.strip()]
    assert back and all("www.example.test" in f["source_names"] for f in back), back
    compact = subprocess.run([cilia, "observe", "--node", "n1", "--to-fqdn", "www.example.test", "--last", "5"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert "api.example.test,www.example.test:80" in compact, compact


def test_wildcard_names_resolve_and_connect(lab: Lab) -> None:
    result = lookup(lab, "img.cdn.example.test")
    assert result["ips"] == ["198.51.100.12"] and result["connect"] == {"198.51.100.12": "web2"}, result
    # `**.cdn.example.test` lets the deeper name resolve, `*.cdn.example.test` (toFQDNs) does not
    # match it, but the address is the same one the shallow name made allowed
    deep = lookup(lab, "a.b.cdn.example.test", connect=False)
    assert deep["rcode"] == "NOERROR" and deep["ips"] == ["198.51.100.12"]


def test_names_outside_the_dns_rule_are_refused(lab: Lab) -> None:
    for name in ("x.y.example.test", "example.test", "api.example.org"):
        assert lookup(lab, name, connect=False)["rcode"] == "REFUSED", name
    assert lookup(lab, "x.y.example.test", "tcp", connect=False)["rcode"] == "REFUSED"


def test_allowed_name_outside_to_fqdns_stays_unreachable(lab: Lab) -> None:
    result = lookup(lab, "other.example.test")
    assert result["ips"] == ["198.51.100.13"]
    assert result["connect"]["198.51.100.13"].startswith("failed"), result
    assert probe_ip(lab, "198.51.100.14") != "connected"  # short.example.test's, not resolved yet


def test_pod_without_dns_rules_is_not_redirected(lab: Lab) -> None:
    result = lookup(lab, "other.example.test", pod="free")  # no policy at all: dnsmasq answers directly
    assert result["ips"] == ["198.51.100.13"] and result["connect"] == {"198.51.100.13": "web3"}


def test_cache_lists_names_with_ttl_and_endpoint(lab: Lab) -> None:
    lookup(lab, "api.example.test", connect=False)
    rows = fqdn_cache("api.example.test")
    assert {r["ip"] for r in rows} >= {"198.51.100.10", "198.51.100.11"}
    assert all(0 < r["ttl_left"] <= 60 and r["endpoints"] for r in rows), rows
    cli = subprocess.run([str(PYTHON).replace("/python", "/cilia"), "fqdn", "cache", "list", "--node", "n1"],
                         capture_output=True, text=True, timeout=30, check=True)
    assert "api.example.test." in cli.stdout and "198.51.100.10" in cli.stdout


def test_ttl_expiry_without_and_with_an_open_connection(lab: Lab) -> None:
    # short.example.test has TTL 2: a connection right after the lookup works, a new one once
    # the TTL passed does not (the GC runs every second) ...
    assert lookup(lab, "short.example.test")["connect"] == {"198.51.100.14": "web4"}
    wait_for(lambda: probe_ip(lab, "198.51.100.14") != "connected", 10, 0.5,
             "short.example.test's address stayed allowed after its TTL")
    assert not fqdn_cache("short.example.test")
    # ... while a connection open across the expiry keeps it (and itself) alive
    args = client_args("short.example.test", "udp", True, 5)
    holder = subprocess.Popen(in_netns(lab.netns_of("client"), PYTHON, *args), stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(holder.stdout.readline())  # type: ignore[union-attr]
        assert first["connect"] == {"198.51.100.14": "web4"}
        time.sleep(3.5)  # past the TTL, connection still open
        assert fqdn_cache("short.example.test"), "expired while a connection to it was open"
        assert probe_ip(lab, "198.51.100.14") == "connected"
        after = json.loads(holder.stdout.readline())  # type: ignore[union-attr]
        assert after == {"after_hold": "again"}
    finally:
        holder.wait(15)


def test_agent_kill_keeps_dns_and_open_connections(lab: Lab) -> None:
    args = client_args("api.example.test", "udp", True, 6)
    holder = subprocess.Popen(in_netns(lab.netns_of("client"), PYTHON, *args), stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(holder.stdout.readline())  # type: ignore[union-attr]
        assert first["connect"] == {"198.51.100.10": "web0", "198.51.100.11": "web1"}
        pid = int(lab.state["nodes"]["n1"]["agent_pid"])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: exited(pid), 10, 0.05, "agent did not die")
        # the agent is down: names still resolve (allowed and refused alike), new names' addresses are allowed
        assert lookup(lab, "img2.cdn.example.test")["connect"] == {"198.51.100.12": "web2"}
        assert lookup(lab, "x.y.example.test", connect=False)["rcode"] == "REFUSED"
        after = [json.loads(holder.stdout.readline()) for _ in range(2)]  # type: ignore[union-attr]
        assert after == [{"after_hold": "again"}, {"after_hold": "again"}]
    finally:
        holder.wait(15)
        lab.start_agent("n1")
    assert lookup(lab, "api.example.test")["connect"] == {"198.51.100.10": "web0", "198.51.100.11": "web1"}
