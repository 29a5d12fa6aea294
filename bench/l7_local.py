"""The HTTP/1.1 proxy's own cost on loopback, no lab (`python -m bench.l7_local`): CPU µs per
proxied request of cilia-proxy's fast path (cilia.proxy.http1fast), of its h11 path (cilia.proxy.http,
what the fast path hands over), and of Debian's nginx as a reverse proxy, each in front of the
same nginx origin (`return 200`) on 127.0.0.1.

The proxy runs in a child process pinned to CPU 1, wrk (one thread) on CPU 0; the cilia proxy
judges every request with a real rules file (an L7 rule `GET /.*`, cilia.proxy.policy, through
the per-connection ConnectionJudge the proxy's HTTP server uses) and sends its access-log records
(two per request) to a unix socket a sink process drains, as the agent's. wrk repeats one
request, so the fast path's kept head and the remembered verdict apply to all but the first.
Per mode: wrk's requests/s with `--connections` connections, its p50 with one, and the proxy
process's CPU time (user + system) divided by the requests it served: the figure the machine's
load changes least. No lab; addresses are loopback only, in a network namespace of its own
(`cilia-bench-l7local-<pid>`, removed afterwards, also on failure: the root namespace carries no
benchmark traffic), so it runs as root."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.l7 import _nginx_conf

ORIGIN_PORT, PROXY_PORT = 18481, 18482
MODES = ("fast", "h11", "nginx")


def _proxy_child(mode: str, seconds: float, accesslog: str, rules_dir: str) -> None:
    """The cilia proxy (fast path or h11 alone) for `seconds`; prints its CPU seconds as JSON."""
    import uvloop

    from cilia.proxy.accesslog import AccessLogSender
    from cilia.proxy.http import ConnInfo, serve_connection
    from cilia.proxy.http1fast import ClientLeg, Route
    from cilia.proxy.observe import AccessLog, RequestCounter
    from cilia.proxy.policy import ConnectionJudge, Parties, PolicyStore
    from cilia.proxy.transparent import Connection

    parties = Parties(300, 400, 3, 7, 6, 80)
    store = PolicyStore(Path(rules_dir))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        sender = AccessLogSender(Path(accesslog))
        conn = Connection("10.0.0.1", 40000, "10.0.0.2", 80, parties)

        async def connect() -> socket.socket:
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", ORIGIN_PORT))
            return sock

        def route(_transport: asyncio.Transport) -> Route:
            info = ConnInfo(ConnectionJudge(store, parties),
                            AccessLog(conn, sender, RequestCounter()))

            async def fallback(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _at_start: bool) -> None:
                async def open_upstream() -> Any:
                    return await asyncio.open_connection(sock=await connect())
                await serve_connection(reader, writer, info, open_upstream)

            return Route(info, connect, fallback, fast=mode == "fast")

        server = await loop.create_server(lambda: ClientLeg(route, tasks), "127.0.0.1", PROXY_PORT)
        await asyncio.sleep(seconds)
        server.close()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime}), flush=True)

    uvloop.run(main())


def _rules(directory: Path) -> None:
    from cilia.policy.l7 import HttpRule
    (directory / "7.json").write_text(json.dumps({"version": 2, "endpoint_id": 7, "audit": False, "egress": [],
                                                  "ingress": [{"rule_id": 1, "identities": None, "policy": {
                                                      "kind": "CiliumNetworkPolicy", "namespace": "default",
                                                      "name": "bench"}, "ports": [{
                                                          "protocol": 6, "low": 80, "high": 80,
                                                          "http": [HttpRule("GET", "/.*").to_json()]}]}]}))


def _nginx_dir() -> Path:
    prefix = Path(tempfile.mkdtemp(prefix="cilia-bench-l7local-"))
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / kind).mkdir()
    return prefix


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(connections: int, seconds: int, latency: bool) -> str:
    command = ["taskset", "-c", "0", "wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    command += ["--latency"] if latency else []
    return subprocess.run([*command, f"http://127.0.0.1:{PROXY_PORT}/"], capture_output=True, text=True,
                          timeout=seconds + 30, check=True).stdout


def _wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def measure(mode: str, seconds: int, connections: int, work: Path) -> dict[str, Any]:
    child: subprocess.Popen[str]
    if mode == "nginx":
        prefix = _nginx_dir()
        conf = _nginx_conf(prefix, f"""\
            upstream origin {{ server 127.0.0.1:{ORIGIN_PORT}; keepalive 64; }}
            server {{
                listen 127.0.0.1:{PROXY_PORT};
                location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }}
            }}
            """)
        child = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", str(conf), "-p", str(prefix)], text=True)
    else:
        child = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "bench.l7_local", "--child", mode,
                                  "--child-seconds", str(seconds + 8), "--work", str(work)],
                                 stdout=subprocess.PIPE, text=True)
    try:
        _wait_listening(PROXY_PORT)
        throughput = _wrk(connections, seconds, False)
        latency = _wrk(1, 2, True)
        if mode == "nginx":
            cpu = _cpu_of(child.pid)
        else:
            assert child.stdout is not None
            cpu = json.loads(child.stdout.readline())["cpu_s"]
    finally:
        child.terminate()
        child.wait(10)
    served = sum(int(m.group(1)) for m in (re.search(r"(\d+) requests in", out) for out in (throughput, latency)) if m)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", throughput)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms)", latency)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms)", latency)
    return {"requests_per_s": float(rps.group(1)) if rps else 0.0,
            "p50_us": (float(p50.group(1)) * (1000 if p50.group(2) == "ms" else 1)) if p50 else 0.0,
            "p99_us": (float(p99.group(1)) * (1000 if p99.group(2) == "ms" else 1)) if p99 else 0.0,
            "cpu_us_per_request": round(cpu * 1e6 / served, 1) if served else 0.0, "requests": served}


def run(seconds: int, connections: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
    work = Path(tempfile.mkdtemp(prefix="cilia-bench-l7local-"))
    _rules(work)
    origin_dir = _nginx_dir()
    origin_conf = _nginx_conf(origin_dir, f'server {{ listen 127.0.0.1:{ORIGIN_PORT}; location / '
                                          f'{{ return 200 "ok\\n"; }} }}\n')
    sink_code = ("import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.bind(sys.argv[1])\n"
                 "s.settimeout(600)\nwhile True:\n    s.recv(70000)\n")
    origin = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", str(origin_conf), "-p", str(origin_dir)])
    sink = subprocess.Popen([sys.executable, "-c", sink_code, str(work / "accesslog.sock")])
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    try:
        _wait_listening(ORIGIN_PORT)
        for index in range(rounds):
            for mode in MODES if index % 2 == 0 else MODES[::-1]:
                figures = measure(mode, seconds, connections, work)
                results[mode].append(figures)
                print(f"round {index + 1}/{rounds} {mode}: {figures['requests_per_s']:.0f} req/s (c={connections}), "
                      f"p50 {figures['p50_us']:.0f} µs p99 {figures['p99_us']:.0f} µs (c=1), "
                      f"proxy CPU {figures['cpu_us_per_request']:.0f} µs/request",
                      flush=True)
    finally:
        for process in (sink, origin):
            process.terminate()
            process.wait(10)
    return results


NETNS_ENV = "CILIA_BENCH_L7LOCAL_NETNS"


def _in_own_netns(argv: list[str]) -> int:
    """This benchmark again inside a fresh network namespace (loopback up), which is removed
    afterwards whatever happens; returns its exit code."""
    netns = f"cilia-bench-l7local-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        env = {**os.environ, NETNS_ENV: netns}
        return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "bench.l7_local", *argv],
                              env=env, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=("fast", "h11"), help=argparse.SUPPRESS)
    parser.add_argument("--child-seconds", type=float, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _proxy_child(args.child, args.child_seconds, str(Path(args.work) / "accesslog.sock"), args.work)
        return
    if os.environ.get(NETNS_ENV) is None:
        sys.exit(_in_own_netns(sys.argv[1:]))
    results = run(args.seconds, args.connections, args.rounds)
    summary = {mode: {key: sorted(r[key] for r in rows)[len(rows) // 2] for key in rows[0]}
               for mode, rows in results.items() if rows}
    print(json.dumps({"medians": summary}, indent=2))


if __name__ == "__main__":
    main()
