"""The agent's Prometheus metrics on a running lab: agents started with `--prometheus-serve-addr
127.0.0.1:9962`, a policy denies client -> web, and /metrics, fetched inside node n1's netns (where
the agent listens), shows the policy drops, the forwards, the endpoint states and regenerations."""

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
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def denied() -> Iterator[Lab]:
    """A lab of its own whose agents serve metrics, with client -> web:80 default-denied."""
    with running_lab(BASIC, agent_args=["--prometheus-serve-addr", ADDRESS]) as lab, \
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
