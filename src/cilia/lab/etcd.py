"""etcd members for the lab and the tests: real `etcd` processes (Debian's etcd-server), each in a
network namespace the project created, stopped by pid, their data removed on teardown.

Each member listens for clients on its namespace's address (agents in node namespaces reach it over
the fabric) and on a unix socket under /run/cilia/etcd/<member>/ (tests, benchmarks and tools on
the host reach it without entering a namespace: a unix socket is a file, not a network address).

With `tls_dir` (the lab's `etcd: {tls: true}`, certificates from cilia.lab.certs) a member serves
its clients over TLS only on its address (`https://`, `--client-cert-auth`: a client needs a
certificate of the lab's CA); the unix socket stays plain, as a local file only root can open, so
the host's tools and tests keep reaching it without certificates. Peers talk plain HTTP.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cilia.lab.errors import LabError
from cilia.lab.process import exited, in_netns, kill_pid, stop_pid
from cilia.paths import RUN_ROOT, STATE_ROOT
from cilia.testing.wait import WaitTimeout, wait_for

ETCD = "etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380
ETCD_RUN_ROOT = RUN_ROOT / "etcd"
ETCD_STATE_ROOT = STATE_ROOT / "etcd"


@dataclass(frozen=True)
class EtcdMemberSpec:
    """One member: its name (cilia-prefixed on disk), the namespace it runs in, the address it
    serves clients and peers on inside that namespace."""

    name: str
    netns: str
    address: str  # IPv4 or IPv6 literal, reachable from the agents' namespaces
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    tls_dir: str | None = None  # ca.crt and <name>.crt/.key: clients served over TLS on `address`

    def _host(self) -> str:
        return f"[{self.address}]" if ":" in self.address else self.address

    @property
    def client_url(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://{self._host()}:{self.client_port}"

    def tls_args(self) -> list[str]:
        if not self.tls_dir:
            return []
        directory = Path(self.tls_dir)
        return ["--cert-file", str(directory / f"{self.name}.crt"), "--key-file", str(directory / f"{self.name}.key"),
                "--client-cert-auth", "--trusted-ca-file", str(directory / "ca.crt")]

    @property
    def peer_url(self) -> str:
        return f"http://{self._host()}:{self.peer_port}"

    @property
    def run_dir(self) -> Path:
        return ETCD_RUN_ROOT / self.name

    @property
    def socket_file(self) -> Path:
        """etcd names a unix listener `<host>:<port>` in its working directory."""
        return self.run_dir / f"etcd.sock:{self.client_port}"

    @property
    def unix_endpoint(self) -> str:
        """A gRPC target: host part `unix:<dir>/etcd.sock`, port `client_port`."""
        return f"unix:{self.run_dir / 'etcd.sock'}:{self.client_port}"

    @property
    def data_dir(self) -> Path:
        return ETCD_STATE_ROOT / self.name

    @property
    def log_file(self) -> Path:
        return self.run_dir / "etcd.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "etcd.pid"


class EtcdCluster:
    """A static etcd cluster of `members` (1 or 3 in practice). `start()` returns once every member
    answers; `stop()` removes processes, data and sockets, also after a failed start."""

    def __init__(self, members: list[EtcdMemberSpec], token: str = "cilia-lab") -> None:
        if not members:
            raise LabError("an etcd cluster needs at least one member")
        self.members = list(members)
        self.token = token
        self._pids: dict[str, int] = {}

    # ----- addresses -----------------------------------------------------------------------------
    @property
    def client_urls(self) -> list[str]:
        """What agents pass as --kvstore-endpoints."""
        return [m.client_url for m in self.members]

    @property
    def unix_endpoints(self) -> list[str]:
        return [m.unix_endpoint for m in self.members]

    def member(self, name: str) -> EtcdMemberSpec:
        for member in self.members:
            if member.name == name:
                return member
        raise LabError(f"no etcd member named {name!r}")

    # ----- processes -----------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        try:
            for member in self.members:
                self._spawn(member, initial=True)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, member: EtcdMemberSpec, initial: bool) -> None:
        member.run_dir.mkdir(parents=True, exist_ok=True)
        member.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        args = [
            ETCD, "--name", member.name, "--data-dir", str(member.data_dir),
            "--listen-client-urls", f"{member.client_url},unix://etcd.sock:{member.client_port}",
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url, "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", cluster, "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            # quick elections: the lab's fault tests kill the leader and expect a new one soon
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            "--logger", "zap", "--log-level", "warn",
            *member.tls_args(),
        ]
        with open(member.log_file, "ab") as out:
            process = subprocess.Popen(
                in_netns(member.netns, *args), cwd=member.run_dir, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self._pids[member.name] = process.pid
        member.pid_file.write_text(str(process.pid))

    def wait_healthy(self, timeout: float = 30.0, members: list[str] | None = None) -> None:
        names = members or [m.name for m in self.members]
        try:
            for name in names:
                member = self.member(name)
                wait_for(lambda m=member: self._answers(m), timeout, 0.2,  # type: ignore[misc]
                         f"etcd member {member.name} did not answer on {member.unix_endpoint}")
        except WaitTimeout as exc:
            raise LabError(f"{exc} (log: {self.member(names[0]).log_file})") from exc

    def _answers(self, member: EtcdMemberSpec) -> bool:
        if not member.socket_file.exists():
            return False
        result = subprocess.run(
            ["etcdctl", f"--endpoints=unix://{member.socket_file}", "endpoint", "health"],
            capture_output=True, text=True, timeout=10, check=False,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return result.returncode == 0

    def pid(self, name: str) -> int | None:
        pid = self._pids.get(name)
        if pid is None:
            with contextlib.suppress(OSError, ValueError):
                pid = int(self.member(name).pid_file.read_text().strip())
        return pid if pid is not None and not exited(pid) else None

    def _status_fields(self, member: EtcdMemberSpec) -> dict[str, str]:
        """`etcdctl endpoint status` of one member, as its fields ({} when it does not answer)."""
        result = subprocess.run(
            ["etcdctl", f"--endpoints=unix://{member.socket_file}", "--command-timeout=2s",
             "endpoint", "status", "-w", "fields"],
            capture_output=True, text=True, timeout=5, check=False,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return dict(line.split(" : ", 1) for line in result.stdout.splitlines() if " : " in line)

    def leader(self, timeout: float = 10.0) -> str:
        """The name of the current leader (a member that answers and says it leads)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in self.members:
                if self.pid(member.name) is None:
                    continue
                fields = self._status_fields(member)
                if fields.get('"Leader"') and fields.get('"Leader"') == fields.get('"MemberID"'):
                    return member.name
            time.sleep(0.1)
        raise LabError(f"no etcd leader within {timeout} s")

    def member_states(self) -> list[dict[str, object]]:
        """Per member: name, netns, client URL, pid (None when not running), and whether it answers
        and leads (`cilia lab status`). One status call per running member, bounded."""
        states: list[dict[str, object]] = []
        for member in self.members:
            pid = self.pid(member.name)
            fields = self._status_fields(member) if pid is not None else {}
            states.append({
                "name": member.name, "netns": member.netns, "client_url": member.client_url, "pid": pid,
                "answers": bool(fields), "leader": bool(fields.get('"Leader"'))
                and fields.get('"Leader"') == fields.get('"MemberID"'),
            })
        return states

    def kill(self, name: str) -> None:
        """kill -9 one member (a crash, for fault tests)."""
        pid = self.pid(name)
        if pid is not None:
            kill_pid(pid)
        self._pids.pop(name, None)

    def restart(self, name: str, timeout: float = 30.0) -> None:
        """Start a killed member again on its existing data (it rejoins the cluster)."""
        self.restart_many([name], timeout)

    def restart_many(self, names: list[str], timeout: float = 30.0) -> None:
        """Start several killed members again, then wait for each: after all of them went down, one
        member alone has no quorum and would not report healthy until the others are back."""
        for name in names:
            if self.pid(name) is not None:
                raise LabError(f"etcd member {name} is still running")
        for name in names:
            member = self.member(name)
            with contextlib.suppress(FileNotFoundError):
                member.socket_file.unlink()
            self._spawn(member, initial=False)
        self.wait_healthy(timeout, list(names))

    def stop(self) -> None:
        for member in self.members:
            pid = self.pid(member.name)
            if pid is not None:
                stop_pid(pid)
            shutil.rmtree(member.run_dir, ignore_errors=True)
            shutil.rmtree(member.data_dir, ignore_errors=True)
        self._pids.clear()
        for root in (ETCD_RUN_ROOT, ETCD_STATE_ROOT):
            with contextlib.suppress(OSError):
                root.rmdir()  # only when no other cluster's member is left in it


def stop_leftover_members() -> None:
    """After a crashed run: stop every member whose pid file survived, remove their files."""
    if ETCD_RUN_ROOT.is_dir():
        for pid_file in ETCD_RUN_ROOT.glob("*/etcd.pid"):
            with contextlib.suppress(OSError, ValueError):
                stop_pid(int(pid_file.read_text().strip()))
    shutil.rmtree(ETCD_RUN_ROOT, ignore_errors=True)
    shutil.rmtree(ETCD_STATE_ROOT, ignore_errors=True)
