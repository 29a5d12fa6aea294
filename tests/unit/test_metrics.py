"""The agent's Prometheus metrics against fakes: names, labels and values of every family, the
text format parsing back, regeneration observed through the queue, and the HTTP server."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cilia.endpoint.state import EndpointState
from cilia.maps.direction import TrafficDirection
from cilia.maps.metrics import MetricsKey
from cilia.metrics.collector import AgentMetrics, Sources
from cilia.metrics.server import MetricsServer, parse_address
from cilia.monitor.events import DropReason
from cilia.policy.regeneration import RegenerationQueue

IN, OUT = int(TrafficDirection.INGRESS), int(TrafficDirection.EGRESS)
TOTALS = {
    MetricsKey(1, 0, IN): (10, 1000),
    MetricsKey(2, 0, IN): (5, 500),
    MetricsKey(1, 0, OUT): (7, 700),
    MetricsKey(1, int(DropReason.POLICY_DENIED), IN): (3, 300),
    MetricsKey(2, int(DropReason.POLICY_DENIED), IN): (1, 100),
    MetricsKey(2, int(DropReason.POLICY_DENIED), OUT): (2, 200),
}


def fake_sources() -> Sources:
    return Sources(
        endpoint_states=lambda: [EndpointState.READY, EndpointState.READY, EndpointState.NOT_READY],
        identities=lambda: [True, True, True, False, False],
        policy_revision=lambda: 7,
        services=lambda: 4,
        metric_totals=lambda: TOTALS,
        events_lost=lambda: 9,
    )


def scrape(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """name + sorted labels -> value, parsed back from the text format Prometheus reads."""
    text = generate_latest(metrics.registry).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_family_has_cilium_names_labels_and_values() -> None:
    samples = scrape(AgentMetrics(fake_sources()))
    assert samples[("cilia_endpoint_state", (("endpoint_state", "ready"),))] == 2
    assert samples[("cilia_endpoint_state", (("endpoint_state", "not-ready"),))] == 1
    assert samples[("cilia_endpoint_state", (("endpoint_state", "regenerating"),))] == 0  # every state present
    assert samples[("cilia_identity", (("type", "reserved"),))] == 3
    assert samples[("cilia_identity", (("type", "cluster_local"),))] == 2
    assert samples[("cilia_policy_max_revision", ())] == 7
    assert samples[("cilia_services", ())] == 4
    assert samples[("cilia_events_lost_total", ())] == 9
    # summed over endpoints, reasons named as the drop-reason table names them
    assert samples[("cilia_drop_count_total", (("direction", "INGRESS"), ("reason", "POLICY_DENIED")))] == 4
    assert samples[("cilia_drop_count_total", (("direction", "EGRESS"), ("reason", "POLICY_DENIED")))] == 2
    assert samples[("cilia_drop_bytes_total", (("direction", "INGRESS"), ("reason", "POLICY_DENIED")))] == 400
    assert samples[("cilia_forward_count_total", (("direction", "INGRESS"),))] == 15
    assert samples[("cilia_forward_count_total", (("direction", "EGRESS"),))] == 7
    assert samples[("cilia_forward_bytes_total", (("direction", "INGRESS"),))] == 1500
    assert samples[("cilia_endpoint_regenerations_total", (("outcome", "success"),))] == 0
    assert samples[("cilia_endpoint_regenerations_total", (("outcome", "fail"),))] == 0
    assert not any(name == "cilia_forward_count_total" and dict(labels).get("reason") for name, labels in samples)


def test_sources_are_read_at_each_scrape() -> None:
    revision = [1]
    sources = fake_sources()
    metrics = AgentMetrics(Sources(sources.endpoint_states, sources.identities, lambda: revision[0],
                                   sources.services, lambda: {}, sources.events_lost))
    assert scrape(metrics)[("cilia_policy_max_revision", ())] == 1
    revision[0] = 5
    samples = scrape(metrics)
    assert samples[("cilia_policy_max_revision", ())] == 5
    assert not any(name.startswith("cilia_drop_count") for name, _labels in samples)  # no datapath counts yet


def test_regenerations_are_counted_and_timed_through_the_queue_observer() -> None:
    metrics = AgentMetrics(fake_sources())
    queue: RegenerationQueue[str] = RegenerationQueue(lambda ep, _s: "no identity" if ep == 3 else "", "s0",
                                                      workers=0)
    queue.add_observer(metrics.observe_regeneration)
    queue.publish("s1", [1, 2, 3])  # workers=0: regenerated in this thread
    samples = scrape(metrics)
    assert samples[("cilia_endpoint_regenerations_total", (("outcome", "success"),))] == 2
    assert samples[("cilia_endpoint_regenerations_total", (("outcome", "fail"),))] == 1
    histogram = "cilia_endpoint_regeneration_time_stats_seconds"
    assert samples[(f"{histogram}_count", (("outcome", "success"), ("scope", "total")))] == 2
    assert samples[(f"{histogram}_bucket", (("le", "+Inf"), ("outcome", "fail"), ("scope", "total")))] == 1


def test_a_failing_observer_does_not_break_regeneration() -> None:
    def broken(_ep: int, _s: float, _e: str) -> None:
        raise RuntimeError("boom")

    queue: RegenerationQueue[str] = RegenerationQueue(lambda _ep, _s: "", "s0", workers=0)
    queue.add_observer(broken)
    queue.publish("s1", [1])
    assert queue.worked == 1 and queue.error(1) == ""


def test_two_agents_do_not_share_series() -> None:
    one, two = AgentMetrics(fake_sources()), AgentMetrics(fake_sources())
    one.observe_regeneration(1, 0.01, "")
    assert scrape(two)[("cilia_endpoint_regenerations_total", (("outcome", "success"),))] == 0


@pytest.mark.parametrize(("text", "parsed"), [
    (":9962", ("", 9962)), ("127.0.0.1:9962", ("127.0.0.1", 9962)), ("[::1]:9962", ("::1", 9962)),
])
def test_serve_addresses(text: str, parsed: tuple[str, int]) -> None:
    assert parse_address(text) == parsed


@pytest.mark.parametrize("text", ["9962", "host:", "host:http", ":0x10", ":70000"])
def test_bad_serve_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_the_server_serves_metrics_and_stops() -> None:
    server = MetricsServer("127.0.0.1:0", AgentMetrics(fake_sources()).registry)
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert response.status == 200
        assert 'cilia_drop_count_total{direction="INGRESS",reason="POLICY_DENIED"} 4.0' in body
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=2)


def test_agent_flag() -> None:
    from cilia.agent.config import parse_config

    base = ["--ipv4-pod-cidr", "10.0.0.0/24"]
    assert parse_config(base).prometheus_serve_addr is None
    assert parse_config([*base, "--prometheus-serve-addr", ""]).prometheus_serve_addr is None
    assert parse_config([*base, "--prometheus-serve-addr", ":9962"]).prometheus_serve_addr == ":9962"
    with pytest.raises(SystemExit):
        parse_config([*base, "--prometheus-serve-addr", "9962"])
