"""bench.policy's arithmetic: per-round ratios, figures with their spread, the target, and the
BPF part's packet and port helpers."""

from __future__ import annotations

import pytest
from bench import policy, policy_cost
from bench.tools import Figures

from cilia.testing.packets import csum


def fig(throughput: float, latency: float = 10.0, rate: float = 1000.0) -> Figures:
    return Figures(throughput_gbps=throughput, latency_avg_us=latency, latency_p99_us=2 * latency,
                   connections_per_s=rate)


def test_ratios_are_medians_of_per_round_ratios_not_ratios_of_medians() -> None:
    # the machine's speed changes from round to round; the ratio of the medians would be 9 / 20
    rounds = [{"cilia-0": fig(a), "cilia-10000": fig(b)} for a, b in ((10.0, 9.0), (20.0, 18.0), (40.0, 4.0))]
    result = policy.ratios(rounds, (0, 10000))
    throughput = result["cilia N/0"]["10000/0"]["throughput"]
    assert (throughput["median"], throughput["min"], throughput["max"]) == (0.9, 0.1, 0.9)
    assert result["target"]["throughput_met"] is False
    assert result["target"]["latency_met"] is True


def test_ratio_stats_give_quartiles_and_range() -> None:
    stats = policy_cost.ratio_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stats == {"median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 5.0}
    assert policy_cost.ratio_stats([1.5])["q1"] == 1.5


def test_size_ratio_and_cilia_against_iptables() -> None:
    rounds = [{"cilia-0": fig(10), "cilia-1000": fig(9), "cilia-10000": fig(9),
               "iptables-0": fig(10), "iptables-1000": fig(5), "iptables-10000": fig(1)}]
    result = policy.ratios(rounds, (0, 1000, 10000))
    assert result["cilia 10000/1000"]["throughput"]["median"] == 1.0
    assert result["iptables 10000/1000"]["throughput"]["median"] == 0.2
    assert result["cilia/iptables"]["10000"]["throughput"]["median"] == 9.0


def test_figures_keep_the_spread_of_the_rounds() -> None:
    rounds = [{"cilia-0": fig(t)} for t in (8.0, 12.0, 10.0)]
    row = policy.figures_of(rounds)["cilia"]["0"]
    assert row["throughput_gbps"] == 10.0
    assert row["throughput_gbps_spread"] == [8.0, 12.0]


def test_each_server_has_its_own_policy() -> None:
    small, large = policy.scale_policy(1000), policy.scale_policy(10000)
    assert small["metadata"]["name"] != large["metadata"]["name"]
    assert small["spec"]["endpointSelector"]["matchLabels"] == policy.server_labels(1000)
    assert len(large["spec"]["ingress"][1]["fromCIDRSet"]) == 10000


def test_with_ttl_keeps_the_ip_checksum_valid() -> None:
    packet = policy_cost.tcp_packet("10.200.1.2", "10.200.1.10", 40000, 5201)
    changed = policy_cost.with_ttl(packet, 255)
    assert changed[22] == 255
    assert csum(changed[14:34]) == 0
    assert changed[34:] == packet[34:]


def test_source_ports_are_never_reused() -> None:
    ports = policy_cost.Ports()
    taken = [ports.take(("pod-to-pod", 0)) for _ in range(3)]
    assert taken == [1024, 1025, 1026]
    assert ports.take(("pod-to-pod", 1000)) == 1024  # another connection tuple
    ports._next[("x", 0)] = 65536
    with pytest.raises(policy_cost.BenchError):
        ports.take(("x", 0))
