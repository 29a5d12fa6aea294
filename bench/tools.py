"""Measuring tools run inside lab namespaces: iperf3 (throughput), sockperf (latency), a CPS meter."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median
from typing import Any

# netns -> cgroup directory: commands run "in" that netns join the cgroup first (a lab pod whose
# processes get socket-level service load balancing). Others stay outside every node's cgroup.
CGROUPS: dict[str, str] = {}
# netns -> CPU: commands run "in" that netns are pinned to it (taskset), so that on a 2-core machine
# the client and the server of a measurement do not share a core (and the same core placement holds
# for every side measured). Namespaces not listed run unpinned.
PIN: dict[str, int] = {}


def ns(netns: str, *args: str) -> list[str]:
    command = ["nsenter", f"--net=/run/netns/{netns}", *args]
    if netns in PIN:
        command = ["taskset", "-c", str(PIN[netns]), *command]
    cgroup = CGROUPS.get(netns)
    if cgroup is None:
        return command
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, *command]


# Every port the tools' servers listen on, all TCP (sockperf runs with --tcp).
PORTS = {"iperf3": 5201, "sockperf": 11111, "cps": 7777}


@dataclass(frozen=True)
class Figures:
    throughput_gbps: float
    latency_avg_us: float
    latency_p99_us: float
    connections_per_s: float


class Server:
    """A server process in a namespace, stopped by its pid."""

    def __init__(self, netns: str, *args: str) -> None:
        self.process = subprocess.Popen(ns(netns, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        time.sleep(0.3)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def server_command(tool: str, listen_ip: str) -> list[str]:
    """The server side of `tool` (a key of PORTS); sockperf listens on listen_ip, the others on all addresses."""
    if tool == "iperf3":
        return ["iperf3", "-s", "-p", str(PORTS["iperf3"])]
    if tool == "sockperf":
        return ["sockperf", "sr", "--tcp", "-i", listen_ip, "-p", str(PORTS["sockperf"])]
    if tool == "cps":
        return [sys.executable, "-c", _CPS_SERVER]
    raise ValueError(f"unknown tool {tool!r} (known: {', '.join(PORTS)})")


def _server(server_ns: str | None, tool: str, server_ip: str) -> Server | None:
    """server_ns None: the servers already listen behind server_ip (the backends of a service address)."""
    return Server(server_ns, *server_command(tool, server_ip)) if server_ns is not None else None


def iperf3(client_ns: str, server_ns: str | None, server_ip: str, seconds: int) -> float:
    server = _server(server_ns, "iperf3", server_ip)
    try:
        out = subprocess.run(ns(client_ns, "iperf3", "-c", server_ip, "-p", "5201", "-t", str(seconds), "-J"),
                             capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        if server is not None:
            server.stop()


def sockperf(client_ns: str, server_ns: str | None, server_ip: str, seconds: int) -> tuple[float, float]:
    server = _server(server_ns, "sockperf", server_ip)
    try:
        out = subprocess.run(ns(client_ns, "sockperf", "pp", "--tcp", "-i", server_ip, "-p", "11111", "-m", "64",
                                "-t", str(seconds)), capture_output=True, text=True, timeout=seconds + 30,
                             check=True).stdout
    finally:
        if server is not None:
            server.stop()
    stats = parse_sockperf(out)
    return stats.avg_us, stats.p99_us


@dataclass(frozen=True)
class Latency:
    """One sockperf ping-pong run: one-way latency (RTT/2) in microseconds."""

    avg_us: float
    p50_us: float
    p99_us: float
    observations: int


def parse_sockperf(out: str) -> Latency:
    """The summary of `sockperf pp` (its avg-latency line may carry ANSI colour codes); 0 for a
    figure the output does not hold."""
    avg = p50 = p99 = 0.0
    observations = 0
    for raw in out.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", raw)
        if "avg-latency=" in line:
            avg = float(line.split("avg-latency=")[1].split()[0])
        elif "percentile 99.000" in line:
            p99 = float(line.split("=")[-1].strip())
        elif "percentile 50.000" in line:
            p50 = float(line.split("=")[-1].strip())
        elif match := re.search(r"Total (\d+) observations", line):
            observations = int(match.group(1))
    return Latency(avg, p50, p99, observations)


def sockperf_latency(client_ns: str, server_ns: str | None, server_ip: str, seconds: int) -> Latency:
    """sockperf TCP ping-pong, 64 B messages: avg, p50 and p99 of the one-way latency."""
    server = _server(server_ns, "sockperf", server_ip)
    try:
        out = subprocess.run(ns(client_ns, "sockperf", "pp", "--tcp", "-i", server_ip, "-p", "11111", "-m", "64",
                                "-t", str(seconds)), capture_output=True, text=True, timeout=seconds + 30,
                             check=True).stdout
    finally:
        if server is not None:
            server.stop()
    return parse_sockperf(out)


_CPS_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7777)); s.listen(1024)
while True:
    c, _ = s.accept(); c.close()
"""
_CPS_CLIENT = """
import socket, sys, time
ip, seconds = sys.argv[1], float(sys.argv[2]); n = failed = 0; end = time.monotonic() + seconds
while time.monotonic() < end and n < 1_000_000:
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\0\\0\\0\\0\\0\\0\\0')
    c.settimeout(1.0)
    try:
        c.connect((ip, 7777)); n += 1
    except OSError:
        failed += 1  # a lost SYN (say, a reused port meeting the server's TIME_WAIT): counted, not waited out
    c.close()
print(n / seconds, failed)
"""


def cps(client_ns: str, server_ns: str | None, server_ip: str, seconds: int) -> float:
    server = _server(server_ns, "cps", server_ip)
    try:
        out = subprocess.run(ns(client_ns, sys.executable, "-c", _CPS_CLIENT, server_ip, str(seconds)),
                             capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        rate, failed = out.split()
        if int(failed):
            print(f"cps {client_ns} -> {server_ip}: {failed} connect(s) timed out after 1 s", file=sys.stderr)
        return float(rate)
    finally:
        if server is not None:
            server.stop()


def measure(client_ns: str, server_ns: str, server_ip: str, seconds: int, repeats: int) -> Figures:
    def med(fn: Callable[[], float]) -> float:
        return median(fn() for _ in range(repeats))

    throughput = med(lambda: iperf3(client_ns, server_ns, server_ip, seconds))
    latencies = [sockperf(client_ns, server_ns, server_ip, seconds) for _ in range(repeats)]
    return Figures(
        throughput_gbps=round(throughput, 2),
        latency_avg_us=round(median(a for a, _ in latencies), 2),
        latency_p99_us=round(median(p for _, p in latencies), 2),
        connections_per_s=round(med(lambda: cps(client_ns, server_ns, server_ip, seconds)), 0),
    )


def existing_cilia_netns() -> list[str]:
    """cilia-* namespaces a lab, test or other benchmark may be using (a lab's cleanup would remove them)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=False).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith("cilia-")]


def refuse_if_busy() -> None:
    leftovers = existing_cilia_netns()
    if leftovers:
        sys.exit(f"cilia-* network namespaces exist ({', '.join(leftovers)}): another lab, test or bench may be "
                 "running; if not, `cilia lab down` removes a crashed run's leftovers")


def write_results(prefix: str, results: dict[str, Any]) -> None:
    """Print the results, keep them in build/bench/<prefix>-<time>.json, and exit 1 if a part failed."""
    from pathlib import Path

    out = Path("build/bench")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {path}", flush=True)
    os.sync()
    if results.get("errors"):
        sys.exit(1)
