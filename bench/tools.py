"""Measuring tools run inside lab namespaces: iperf3 (throughput), sockperf (latency), a CPS meter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from statistics import median


def ns(netns: str, *args: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{netns}", *args]


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


def iperf3(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    server = Server(server_ns, "iperf3", "-s", "-p", "5201")
    try:
        out = subprocess.run(ns(client_ns, "iperf3", "-c", server_ip, "-p", "5201", "-t", str(seconds), "-J"),
                             capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.stop()


def sockperf(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> tuple[float, float]:
    server = Server(server_ns, "sockperf", "sr", "--tcp", "-i", server_ip, "-p", "11111")
    try:
        out = subprocess.run(ns(client_ns, "sockperf", "pp", "--tcp", "-i", server_ip, "-p", "11111", "-m", "64",
                                "-t", str(seconds)), capture_output=True, text=True, timeout=seconds + 30,
                             check=True).stdout
    finally:
        server.stop()
    avg = p99 = 0.0
    for line in out.splitlines():
        if "avg-latency=" in line:
            avg = float(line.split("avg-latency=")[1].split()[0])
        if "percentile 99.000" in line:
            p99 = float(line.split("=")[-1].strip())
    return avg, p99


_CPS_SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7777)); s.listen(1024)
while True:
    c, _ = s.accept(); c.close()
"""
_CPS_CLIENT = """
import socket, sys, time
ip, seconds = sys.argv[1], float(sys.argv[2]); n = 0; end = time.monotonic() + seconds
while time.monotonic() < end and n < 1_000_000:
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\0\\0\\0\\0\\0\\0\\0')
    c.connect((ip, 7777)); c.close(); n += 1
print(n / seconds)
"""


def cps(client_ns: str, server_ns: str, server_ip: str, seconds: int) -> float:
    server = Server(server_ns, sys.executable, "-c", _CPS_SERVER)
    try:
        out = subprocess.run(ns(client_ns, sys.executable, "-c", _CPS_CLIENT, server_ip, str(seconds)),
                             capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
        return float(out.strip())
    finally:
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
