"""Real CNI clients for e2e tests: podman (CNI backend) and containerd's ctr, on private config.

Nothing here edits the machine's podman or containerd configuration: podman gets its own
containers.conf (CONTAINERS_CONF), storage root and CNI config dir; containerd runs as our own
process with its own root, state and socket. The one exception is ctr, which only reads
/etc/cni/net.d: `00-cilia-e2e.conflist` is added there for the test's duration and removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cilia.testing import wait_for

BUSYBOX = Path("/bin/busybox")
CTR_CONFLIST = Path("/etc/cni/net.d/00-cilia-e2e.conflist")


def build_busybox_rootfs(root: Path) -> Path:
    """A ~2 MB root filesystem: busybox with its applets, /etc/passwd, and a page for httpd."""
    for sub in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "usr/bin", "usr/sbin", "www"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    subprocess.run(["chroot", str(root), "/bin/busybox", "--install", "-s"], check=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "www/index.html").write_text("cilia-e2e\n")
    return root


def network_conflist(name: str, agent_socket: Path, cni_version: str = "1.0.0") -> dict[str, object]:
    return {"cniVersion": cni_version, "name": name,
            "plugins": [{"type": "cilia-cni", "agentSocket": str(agent_socket)}]}


@dataclass
class Podman:
    """podman with a private containers.conf, storage and CNI config dir."""

    workdir: Path
    network: str

    @classmethod
    def create(cls, workdir: Path, agent_socket: Path, network: str = "cilia-e2e") -> Podman:
        netdir = workdir / "net.d"
        netdir.mkdir(parents=True, exist_ok=True)
        (netdir / f"{network}.conflist").write_text(json.dumps(network_conflist(network, agent_socket)))
        (workdir / "tmp").mkdir(exist_ok=True)
        (workdir / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            'cni_plugin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]\n'
            f'network_config_dir = "{netdir}"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{workdir / "tmp"}"\n'
        )
        return cls(workdir=workdir, network=network)

    def run(self, *args: str, timeout: float = 90, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = ["podman", "--root", str(self.workdir / "storage"), "--runroot", str(self.workdir / "run"),
                   "--storage-driver", "vfs", *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.workdir / "containers.conf")}
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def container_ip(self, name: str) -> str:
        data = json.loads(self.run("inspect", name).stdout)
        return str(data[0]["NetworkSettings"]["Networks"][self.network]["IPAddress"])

    def remove_all(self) -> None:
        self.run("rm", "-af", "-t", "2", check=False, timeout=120)


@dataclass
class Containerd:
    """A containerd process of our own (no systemd here), stopped by its pid."""

    workdir: Path
    process: subprocess.Popen[bytes]

    def ctr(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(self.workdir / "containerd.sock"), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)


@contextmanager
def containerd(workdir: Path) -> Iterator[Containerd]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{workdir / "root"}"\n'
        f'state = "{workdir / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        "[grpc]\n"
        f'  address = "{workdir / "containerd.sock"}"\n'
    )
    log_path = workdir / "containerd.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    daemon = Containerd(workdir=workdir, process=process)
    try:
        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"containerd exited at start-up: {log_path.read_text()[-2000:]}")
            return daemon.ctr("version", timeout=5).returncode == 0

        wait_for(answers, 30, 0.2, lambda: f"containerd did not start: {log_path.read_text()[-2000:]}")
        yield daemon
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


@contextmanager
def ctr_network(agent_socket: Path) -> Iterator[Path]:
    """ctr reads only /etc/cni/net.d (first conflist by name): ours is there for the test's duration."""
    if CTR_CONFLIST.exists():
        raise AssertionError(f"{CTR_CONFLIST} exists already: another run is using it or left it behind")
    CTR_CONFLIST.parent.mkdir(parents=True, exist_ok=True)
    CTR_CONFLIST.write_text(json.dumps(network_conflist("cilia-e2e", agent_socket)))
    try:
        yield CTR_CONFLIST
    finally:
        CTR_CONFLIST.unlink(missing_ok=True)
