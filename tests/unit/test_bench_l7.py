"""bench.l7's reading of wrk's report, its summary (medians, per-round ratios, added p50) and the
nginx configurations it writes."""

from __future__ import annotations

from pathlib import Path

from bench import l7

WRK = """\
Running 3s test @ http://10.200.1.3:81/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   650.21us    1.20ms  22.10ms   93.00%
    Req/Sec    34.10k     2.01k   36.90k    70.00%
  Latency Distribution
     50%  257.00us
     75%  846.00us
     90%    2.68ms
     99%    1.01s
  102329 requests in 3.00s, 15.32MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  34041.39
Transfer/sec:      5.11MB
"""


def test_parse_wrk() -> None:
    assert l7.parse_wrk(WRK) == {"requests_per_s": 34041.39, "p50_us": 257.0, "p75_us": 846.0, "p90_us": 2680.0,
                                 "p99_us": 1_010_000.0, "socket_errors": 3, "non_2xx": 7, "requests": 102329}


def test_summary_ratios_per_round() -> None:
    def run(rps: float, p50: float) -> dict[str, list[dict[str, float]]]:
        return {"throughput": [{"requests_per_s": rps}], "latency": [{"requests_per_s": rps / 4, "p50_us": p50,
                                                                       "p99_us": 2 * p50}]}

    got = l7.summarize({"direct": run(1000, 100), "cilia": run(600, 250), "nginx": run(900, 150)})
    assert got["ratios"]["cilia/direct"] == 0.6 and got["ratios"]["cilia/nginx"] == 0.667
    assert got["ratios"]["cilia-403/direct"] is None
    assert got["cilia_added_p50_us"] == 150 and got["nginx_added_p50_us"] == 50
    assert got["medians"]["cilia"] == {"requests_per_s": 600, "p50_us": 250, "p99_us": 500,
                                       "single_connection_requests_per_s": 150}


def test_summary_ratios_every_round_and_cpu_medians() -> None:
    def runs(*rps: float) -> dict[str, list[dict[str, float]]]:
        return {"throughput": [{"requests_per_s": r, "proxy_cpu_us_per_request": r / 100,
                                "agent_cpu_us_per_request": 1.0} for r in rps],
                "latency": [{"requests_per_s": r / 4, "p50_us": 100.0, "p99_us": 200.0} for r in rps]}

    got = l7.summarize({"direct": runs(1000, 1000, 1000), "cilia": runs(500, 600, 700),
                        "nginx": runs(1000, 1000, 1000)})
    assert got["ratios_by_round"]["cilia/nginx"] == [0.5, 0.6, 0.7] and got["ratios"]["cilia/nginx"] == 0.6
    assert got["ratios_by_round"]["cilia-403/nginx"] is None
    assert got["medians"]["cilia"]["proxy_cpu_us_per_request"] == 6.0


def test_placements_give_the_proxy_its_own_core_or_share_it() -> None:
    """shared: the origin and the proxy on one CPU (the earlier runs'); proxy-core: the proxy alone on
    its CPU, the client, the origin and the agent on the other, the same for every mode."""
    shared, own = l7.PLACEMENTS["shared"], l7.PLACEMENTS["proxy-core"]
    assert shared.origin == shared.proxy != shared.client and shared.agent is None
    assert own.proxy not in (own.client, own.origin, own.agent) and own.client == own.origin == own.agent


def test_nginx_configurations(tmp_path: Path) -> None:
    origin = l7.origin_conf(tmp_path).read_text()
    assert "listen 80;" in origin and "listen 81;" in origin and "worker_processes 1;" in origin
    assert f"proxy_temp_path {tmp_path}/proxy;" in origin
    proxy = l7.reverse_proxy_conf(tmp_path, "10.200.1.3").read_text()
    assert "server 10.200.1.3:81; keepalive 64;" in proxy and 'proxy_set_header Connection "";' in proxy
