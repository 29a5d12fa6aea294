"""The agent's Prometheus metrics on a running lab: agents started with `--prometheus-serve-addr
127.0.0.1:9962`, a policy denies client -> web, and /metrics, fetched inside node n1's netns (where
the agent listens), shows the policy drops, the forwards, the endpoint states and regenerations, and
the Hubble metrics `icmp` and `port-distribution`: an ICMP echo between two pods and an allowed TCP
connection's port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cilia.lab.lab import PYTHON, Lab
from cilia.testing import wait_for
from cilia.testing.labs import BASIC, client_denied_to_web, running_lab

ADDRESS = "127.0.0.1:9962"
FETCH = ("import sys, urllib.request; "
         f"sys.stdout.write(urllib.request.urlopen('http://{ADDRESS}/metrics', timeout=5).read().decode())")
HUBBLE_METRICS = ("icmp:sourceContext=pod;destinationContext=pod "
                  "port-distribution:sourceContext=pod;destinationContext=pod")
# one ICMP echo request from the pod it runs in (a raw socket: the lab has no ping), waits for the reply
ECHO = """
import socket, struct, sys, time
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF
target = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(3)
body = struct.pack("!BBHHH", 8, 0, 0, 0x4321, 1) + b"cilia-echo"
s.sendto(struct.pack("!BBHHH", 8, 0, checksum(body), 0x4321, 1) + b"cilia-echo", (target, 0))
deadline = time.monotonic() + 3
while time.monotonic() < deadline:
    data, (peer, _) = s.recvfrom(2048)
    if peer == target and data[(data[0] & 0x0F) * 4] == 0:
        print("reply")
        break
"""
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def denied() -> Iterator[Lab]:
    """A lab of its own whose agents serve metrics, with client -> web:80 default-denied."""
    with running_lab(BASIC, agent_args=["--prometheus-serve-addr", ADDRESS, "--hubble-metrics", HUBBLE_METRICS]) \
            as lab, \
            client_denied_to_web(lab) as running:
        yield running


def scrape(lab: Lab, node: str = "n1") -> Samples:
    result = lab.exec(node, [PYTHON, "-c", FETCH], timeout=30)
    assert result.returncode == 0, f"GET /metrics in {node}'s netns failed: {result.stderr[-2000:]}"
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(result.stdout) for s in family.samples}


def test_policy_drops_and_forwards_are_counted(denied: Lab) -> None:
    def dropped() -> float:
        return scrape(denied).get(("cilia_drop_count_total", (("direction", "INGRESS"),
                                                              ("reason", "POLICY_DENIED"))), 0.0)

    # the metrics map is per-CPU and read at scrape time: no wait should be needed, but bound one
    wait_for(lambda: dropped() > 0, 10, 0.2, lambda: "no INGRESS POLICY_DENIED drops in /metrics")
    before = dropped()
    assert denied.probe("client", "web", 80, timeout=1.0)["verdict"] != "connected"
    wait_for(lambda: dropped() > before, 10, 0.2, lambda: "a new denied probe did not raise the drop count")
    samples = scrape(denied)
    assert samples[("cilia_drop_bytes_total", (("direction", "INGRESS"), ("reason", "POLICY_DENIED")))] > 0
    assert samples[("cilia_forward_count_total", (("direction", "EGRESS"),))] > 0
    assert samples[("cilia_forward_bytes_total", (("direction", "INGRESS"),))] > 0


def test_endpoint_identity_policy_and_regeneration_families(denied: Lab) -> None:
    samples = scrape(denied)
    n1_pods = list(denied.state["pods"])  # lab-basic has one node
    assert samples[("cilia_endpoint_state", (("endpoint_state", "ready"),))] == len(n1_pods) > 0
    assert samples[("cilia_endpoint_state", (("endpoint_state", "not-ready"),))] == 0
    assert samples[("cilia_identity", (("type", "reserved"),))] > 0
    assert samples[("cilia_identity", (("type", "cluster_local"),))] > 0
    assert samples[("cilia_policy_max_revision", ())] >= 1
    assert samples[("cilia_endpoint_regenerations_total", (("outcome", "success"),))] >= len(n1_pods)
    histogram = "cilia_endpoint_regeneration_time_stats_seconds_count"
    assert samples[(histogram, (("outcome", "success"), ("scope", "total")))] >= len(n1_pods)
    assert ("cilia_events_lost_total", ()) in samples and ("cilia_services", ()) in samples


def test_icmp_echo_and_tcp_port_in_hubble_metrics(denied: Lab) -> None:
    """An ICMP echo client -> db (no policy selects db) shows in hubble_icmp_total with its pods
    (the reply is not traced: monitor aggregation traces a connection's new packets, as
    Cilium's `medium`); db -> web:80 (allowed) in hubble_port_distribution_total, the reply's
    ephemeral port not."""
    def count(name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for (n, ls), v in scrape(denied).items() if n == name and wanted <= set(ls))

    requests = {"family": "IPv4", "type": "EchoRequest", "source": "default/client", "destination": "team-a/db"}
    before = count("hubble_icmp_total", **requests)
    result = denied.exec("client", [PYTHON, "-c", ECHO, denied.address_of("db")], timeout=30)
    assert result.stdout.strip() == "reply", f"no echo reply from db: {result.stdout!r} {result.stderr[-2000:]}"
    wait_for(lambda: count("hubble_icmp_total", **requests) > before, 10, 0.2,
             lambda: f"the echo request is not in hubble_icmp_total: {count('hubble_icmp_total')} ICMP in all")

    port = {"protocol": "TCP", "port": "80", "source": "team-a/db", "destination": "default/web"}
    before = count("hubble_port_distribution_total", **port)
    assert denied.probe("db", "web", 80)["verdict"] == "connected"
    wait_for(lambda: count("hubble_port_distribution_total", **port) > before, 10, 0.2,
             lambda: "db -> web:80 is not in hubble_port_distribution_total")
    samples = scrape(denied)
    replies = [ls for (n, ls), _v in samples.items() if n == "hubble_port_distribution_total"
               and dict(ls)["source"] == "default/web" and dict(ls)["protocol"] == "TCP"]
    assert not replies, f"a reply's port was counted: {replies}"
    # the echo request is a forwarded non-reply too: ICMP counts as port 0
    assert count("hubble_port_distribution_total", protocol="ICMPv4", port="0", source="default/client",
                 destination="team-a/db") > 0
