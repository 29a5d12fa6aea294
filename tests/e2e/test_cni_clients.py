"""podman 4.3 (CNI backend) and containerd's ctr run containers that talk through cilia."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.api.client import AgentClient
from cilia.lab.lab import Lab
from cilia.paths import NodePaths
from cilia.testing import wait_for

from .cni_clients import Podman, build_busybox_rootfs, containerd, ctr_network

SOCKET = NodePaths("n1").socket


def endpoints_of(prefix: str) -> list[str]:
    with AgentClient(SOCKET) as client:
        return [e.container_id for e in client.list_endpoints() if e.container_id.startswith(prefix)]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cilia-e2e-clients-") as tmp:
        path = Path(tmp)
        build_busybox_rootfs(path / "rootfs")
        yield path


def test_podman_containers_talk_through_cilia(lab: Lab, workdir: Path) -> None:
    podman = Podman.create(workdir / "podman", SOCKET)
    rootfs = str(workdir / "rootfs")
    try:
        podman.run("run", "-d", "--name", "cilia-e2e-web", "--network", podman.network, "--rootfs", rootfs,
                   "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www")
        web_ip = podman.container_ip("cilia-e2e-web")
        assert web_ip.startswith("10.200.1.")
        # busybox-static's wget crashes resolving names without NSS; nc with a literal IP does not.
        request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {web_ip} 80"
        got = podman.run("run", "--rm", "--network", podman.network, "--rootfs", rootfs, "/bin/sh", "-c", request)
        assert "200 OK" in got.stdout and "cilia-e2e" in got.stdout, got.stdout
        # and a lab pod reaches the podman container too
        assert lab.probe("client", web_ip, 80, "tcp")["verdict"] == "connected"
    finally:
        podman.remove_all()
    assert endpoints_of(podman.run("ps", "-aq", check=False).stdout.strip() or "no-such") == []
    with AgentClient(SOCKET) as client:
        assert all(e.pod_name in ("client", "web", "db") for e in client.list_endpoints())


def test_ctr_container_reaches_a_pod(lab: Lab, workdir: Path) -> None:
    web = lab.address_of("web")
    with containerd(workdir / "containerd") as daemon, ctr_network(SOCKET):
        request = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {web} 8080"
        result = daemon.ctr("run", "--rm", "--cni", "--rootfs", str(workdir / "rootfs"), "cilia-e2e-ctr",
                            "/bin/sh", "-c", request, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "200 OK" in result.stdout and result.stdout.rstrip().endswith("web"), result.stdout
    # ctr's DEL (empty CNI_NETNS) removed it
    wait_for(lambda: endpoints_of("default-cilia-e2e-ctr") == [], 10, 0.2,
             "ctr's CNI DEL left the container's endpoint behind")
