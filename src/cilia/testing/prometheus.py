"""A real Prometheus server (Debian's `prometheus`) inside a lab host's network namespace, for
e2e tests and benchmarks: it scrapes targets of that namespace (a node's agent on
127.0.0.1:9962), listens on an address of that namespace only, and is queried through its HTTP
API by a command run in the same namespace. Never in the root namespace; stopped by pid."""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cilia.lab.lab import PYTHON, Lab
from cilia.lab.process import spawn, stop_pid
from cilia.testing.wait import wait_for

BINARY = "/usr/bin/prometheus"
LISTEN = "127.0.0.1:19090"
_GET = ("import sys, urllib.request; "
        "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())")


class Prometheus:
    def __init__(self, lab: Lab, host: str, listen: str, pid: int, workdir: Path) -> None:
        self.lab, self.host, self.listen, self.pid, self.workdir = lab, host, listen, pid, workdir

    def get(self, path: str, **params: str) -> Any:
        """GET an API path inside the host's namespace; the decoded JSON `data`."""
        url = f"http://{self.listen}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        result = self.lab.exec(self.host, [PYTHON, "-c", _GET, url], timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"GET {url} in {self.host}'s netns failed: {result.stderr[-1000:]}")
        body = json.loads(result.stdout)
        if body.get("status") != "success":
            raise RuntimeError(f"GET {url}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query (/api/v1/query): the result vector."""
        data = self.get("/api/v1/query", query=promql)
        return list(data["result"])

    def value(self, promql: str) -> float | None:
        """The single value of a query that yields one series (None: no series)."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextmanager
def prometheus_in(lab: Lab, host: str, targets: list[str], *, interval: str = "1s",
                  listen: str = LISTEN, job: str = "cilia-agent") -> Iterator[Prometheus]:
    """Prometheus in `host`'s netns scraping `targets` (addresses of that netns) every `interval`;
    up once every target has been scraped successfully, stopped and its data removed on exit."""
    if not Path(BINARY).exists():
        raise RuntimeError(f"{BINARY} missing: apt-get install prometheus (scripts/install-deps.sh)")
    workdir = Path(tempfile.mkdtemp(prefix="cilia-prometheus-"))
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }))
    pid = spawn(lab.netns_of(host), [BINARY, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                                     f"--web.listen-address={listen}", "--storage.tsdb.retention.time=1h"],
                workdir / "prometheus.log")
    server = Prometheus(lab, host, listen, pid, workdir)
    try:
        def all_up() -> bool:
            try:
                ups = server.query(f'up{{job="{job}"}}')
            except (RuntimeError, json.JSONDecodeError):
                return False
            return len(ups) == len(targets) and all(u["value"][1] == "1" for u in ups)

        wait_for(all_up, 60, 0.5, lambda: f"prometheus did not scrape {targets}: {server.log()}")
        yield server
    finally:
        stop_pid(pid)
        shutil.rmtree(workdir, ignore_errors=True)
