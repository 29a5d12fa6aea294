"""bench.stats (percentiles, per-round ratios), sockperf's output as bench.tools reads it, and
bench.crossnode's medians, ratios and target verdicts."""

from __future__ import annotations

import pytest
from bench import crossnode
from bench.stats import median_ratio, percentile, ratio, summary
from bench.tools import parse_sockperf

SOCKPERF = """\
sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=12667; ReceivedMessages=12666
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=0.550 sec; SentMessages=4645; ReceivedMessages=4645
sockperf: \x1b[2;35m====> avg-latency=59.178 (std-dev=50.277)\x1b[0m
sockperf: Summary: Latency is 59.178 usec
sockperf: \x1b[2;35mTotal 4645 observations\x1b[0m; each percentile contains 46.45 observations
sockperf: ---> <MAX> observation = 1769.125
sockperf: ---> percentile 99.999 = 1769.125
sockperf: ---> percentile 99.990 = 1769.125
sockperf: ---> percentile 99.900 =  565.426
sockperf: ---> percentile 99.000 =  200.893
sockperf: ---> percentile 90.000 =   72.003
sockperf: ---> percentile 50.000 =   58.573
sockperf: ---> <MIN> observation =    8.184
"""


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile(range(1, 101), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("values, q", [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_refuses_empty_samples_and_bad_ranks(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_summary_of_a_sample_and_of_nothing() -> None:
    assert summary([0.1, 0.3, 0.2]) == {"n": 3, "p50": 0.2, "p99": 0.298, "min": 0.1, "max": 0.3}
    assert summary([]) == {"n": 0}


def test_ratios_skip_rounds_without_a_baseline() -> None:
    assert ratio(3.0, 0.0) is None
    assert ratio(3.0, 2.0) == 1.5
    # per-round ratios 0.5, 2.0 (the 0 baseline is skipped): their median, not the ratio of the medians
    assert median_ratio([(10.0, 5.0), (0.0, 9.0), (1.0, 2.0)]) == 1.25
    assert median_ratio([(0.0, 1.0)]) is None


def test_sockperf_summary_is_read_through_its_colour_codes() -> None:
    stats = parse_sockperf(SOCKPERF)
    assert (stats.avg_us, stats.p50_us, stats.p99_us, stats.observations) == (59.178, 58.573, 200.893, 4645)


def test_sockperf_output_without_a_summary_reads_as_zero() -> None:
    stats = parse_sockperf("sockperf: Test ended\n")
    assert (stats.avg_us, stats.p50_us, stats.p99_us, stats.observations) == (0.0, 0.0, 0.0, 0)


def side(throughput: float, latency: float, rate: float = 1000.0) -> crossnode.Side:
    return crossnode.Side(throughput, latency, latency, 2 * latency, rate)


def test_crossnode_ratios_and_verdicts() -> None:
    rounds = [{"linux": side(10.0, 20.0), "cilia": side(9.8, 20.4)},
              {"linux": side(5.0, 40.0), "cilia": side(4.0, 48.0)},
              {"linux": side(8.0, 10.0), "cilia": side(8.0, 10.0)}]
    result = crossnode.ratios(rounds, "linux", "cilia")
    assert result["throughput_gbps"] == 0.98  # per-round 0.98, 0.8, 1.0
    assert result["latency_avg_us"] == 1.02  # 1.02, 1.2, 1.0
    assert crossnode.verdicts(result) == {"throughput (>= 0.95x)": "met", "latency avg (<= 1.05x)": "met"}
    assert crossnode.verdicts({"throughput_gbps": 0.9, "latency_avg_us": 1.1}) == {
        "throughput (>= 0.95x)": "missed", "latency avg (<= 1.05x)": "missed"}
    assert crossnode.medians(rounds, "linux") == side(8.0, 20.0)


def test_crossnode_interleaves_repeated_runs_a_b_b_a() -> None:
    calls: list[str] = []
    runs = crossnode.interleaved(["linux", "cilia"], 3, lambda s: calls.append(s) or len(calls))
    assert calls == ["linux", "cilia", "cilia", "linux", "linux", "cilia"]
    assert runs == {"linux": [1, 4, 5], "cilia": [2, 3, 6]}


def test_crossnode_lab_topologies() -> None:
    native = crossnode.lab_topology("native")
    assert (native["kvstore"], native["routing"]) == ("etcd", "native")
    assert [p["node"] for p in native["pods"]] == ["n1", "n2"]
    assert "routing" not in crossnode.lab_topology("fabric")
