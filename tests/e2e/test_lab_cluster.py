"""A cluster lab (`kvstore: etcd`) comes up with its members each in a namespace of their own on the
fabric, the agents pointed at them, the lab's objects applied once; the fault helpers do what they say
(leader kill -9 and restart, a node cut off from etcd and back); `lab down` and the sweep after a
crash leave no member, data, socket or namespace behind."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.api.client import AgentClient
from cilia.lab.etcd import ETCD_RUN_ROOT, ETCD_STATE_ROOT
from cilia.lab.lab import PYTHON, STATE_FILE, Lab, cleanup_leftovers
from cilia.lab.process import exited, in_netns
from cilia.lab.topology import parse_topology
from cilia.paths import RUN_ROOT, NodePaths

CILIA = str(Path(PYTHON).with_name("cilia"))  # this checkout's CLI, not whichever is on PATH
SMALL = {  # three nodes, three members, one pod per node: quick to build
    "kvstore": "etcd", "etcd": {"members": 3},
    "nodes": [{"name": "n1"}, {"name": "n2"}, {"name": "n3"}],
    "namespaces": [{"name": "team-a", "labels": {"team": "a"}}],
    "pods": [{"name": "a", "node": "n1", "labels": {"app": "a"}, "ports": [{"port": 80}]},
             {"name": "b", "node": "n2", "namespace": "team-a", "labels": {"app": "b"}},
             {"name": "c", "node": "n3", "labels": {"app": "c"}}],
}


def cilia_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith("cilia-"))


def etcdctl_from(netns: str, endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    """etcdctl run in a node's namespace against a member's fabric address."""
    return subprocess.run(in_netns(netns, "etcdctl", f"--endpoints={endpoint}", "--dial-timeout=1s",
                                   "--command-timeout=2s", *args),
                          capture_output=True, text=True, timeout=20, check=False,
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


def agent_cmdline(lab: Lab, node: str) -> list[str]:
    pid = int(lab.state["nodes"][node]["agent_pid"])
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


@pytest.fixture(scope="module")
def clab() -> Iterator[Lab]:
    cleanup_leftovers()
    lab = Lab.up(parse_topology(SMALL, "SMALL"))
    try:
        yield lab
    finally:
        lab.down()


def test_members_in_their_own_namespaces_and_healthy(clab: Lab) -> None:
    assert clab.etcd_members == ["cilia-etcd-1", "cilia-etcd-2", "cilia-etcd-3"]
    assert {"cilia-etcd-1", "cilia-etcd-2", "cilia-etcd-3"} <= set(cilia_namespaces())
    states = clab.status()["etcd"]
    assert [s["name"] for s in states] == clab.etcd_members
    assert all(s["answers"] and s["pid"] for s in states), states
    assert sum(bool(s["leader"]) for s in states) == 1, states
    for i, member in enumerate(clab.etcd.members, start=1):
        assert member.client_url == f"http://192.0.2.20{i}:2379"
        assert member.socket_file.exists()  # the host-side unix socket
        # each member's process runs in its own namespace
        pid = clab.etcd.pid(member.name)
        assert pid is not None
        ns_inode = os.stat(f"/run/netns/{member.netns}").st_ino
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == ns_inode, f"{member.name} is not in {member.netns}"


def test_agents_get_the_cluster_flags_and_reach_every_member(clab: Lab) -> None:
    urls = ",".join(f"http://192.0.2.20{i}:2379" for i in (1, 2, 3))
    for node in ("n1", "n2", "n3"):
        args = agent_cmdline(clab, node)
        joined = " ".join(args)
        assert f"--kvstore etcd --kvstore-endpoints {urls} --routing-mode native" in joined, args
        assert "--ipv4-native-routing-cidr 10.200.0.0/16 --ipv6-native-routing-cidr fd00:200::/48" in joined
        for url in urls.split(","):  # over the fabric, from the node's namespace
            result = etcdctl_from(clab.state["nodes"][node]["netns"], url, "endpoint", "health")
            assert result.returncode == 0, f"{node} -> {url}: {result.stderr}"


def test_objects_applied_once_and_seen_by_every_node(clab: Lab) -> None:
    for node in ("n1", "n2", "n3"):
        with AgentClient(NodePaths(node).socket) as client:
            namespaces = {o["metadata"]["name"] for o in client.get("/v1/resources", {"kind": "Namespace"})}
            pods = {(o["metadata"]["namespace"], o["metadata"]["name"])
                    for o in client.get("/v1/resources", {"kind": "Pod"})}
        assert {"default", "team-a"} <= namespaces, (node, namespaces)
        assert {("default", "a"), ("team-a", "b"), ("default", "c")} <= pods, (node, pods)
    # in etcd, each object once
    endpoint = clab.etcd.members[0].unix_endpoint.removeprefix("unix:")
    keys = subprocess.run(["etcdctl", f"--endpoints=unix://{endpoint}", "get", "--prefix", "cilia/resources/",
                           "--keys-only"], capture_output=True, text=True, timeout=20, check=True,
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}).stdout.split()
    assert sorted(k for k in keys if "/Pod/" in k) == [
        "cilia/resources/Pod/default/a", "cilia/resources/Pod/default/c", "cilia/resources/Pod/team-a/b"]


def test_leader_kill_9_and_restart(clab: Lab) -> None:
    leader = clab.etcd_leader()
    pid = clab.etcd.pid(leader)
    assert pid is not None
    assert clab.kill_etcd_leader() == leader
    assert exited(pid)
    new = clab.etcd_leader(timeout=15)
    assert new != leader
    states = {s["name"]: s for s in clab.status()["etcd"]}
    assert states[leader]["pid"] is None and not states[leader]["answers"]
    clab.restart_etcd([leader])
    assert all(s["answers"] for s in clab.status()["etcd"])


def test_all_members_down_and_back(clab: Lab) -> None:
    down = clab.kill_etcd()
    assert down == clab.etcd_members
    assert not any(s["pid"] for s in clab.status()["etcd"])
    clab.restart_etcd()
    assert all(s["answers"] for s in clab.status()["etcd"])
    clab.etcd_leader(timeout=15)


def test_cut_off_and_restore(clab: Lab) -> None:
    n2 = clab.state["nodes"]["n2"]["netns"]
    url = clab.etcd.members[0].client_url
    clab.cut_off_etcd("n2")
    try:
        assert etcdctl_from(n2, url, "endpoint", "health").returncode != 0
        # both ways: the member cannot send to n2 either (etcd's watch events would still arrive)
        member = clab.etcd.members[0].netns
        assert clab.probe(member, clab.state["nodes"]["n2"]["ipv4"], 9)["verdict"] != "refused"
        assert etcdctl_from(clab.state["nodes"]["n1"]["netns"], url, "endpoint", "health").returncode == 0
        # only etcd is cut: the node still reaches the other nodes (a closed port answers with a reset)
        assert clab.probe("n2", clab.state["nodes"]["n1"]["ipv4"], 9)["verdict"] == "refused"
        assert Lab.load().state["nodes"]["n2"]["etcd_cut_off"] is True
        shown = subprocess.run([CILIA, "lab", "status"], capture_output=True, text=True, timeout=60, check=True)
        assert "cut off" in shown.stdout and "cilia-etcd-1" in shown.stdout
    finally:
        clab.restore_etcd("n2")
    assert etcdctl_from(n2, url, "endpoint", "health").returncode == 0
    assert clab.probe(clab.etcd.members[0].netns, clab.state["nodes"]["n2"]["ipv4"], 9)["verdict"] == "refused"


def test_status_json_lists_members(clab: Lab) -> None:
    out = subprocess.run([CILIA, "lab", "status", "-o", "json"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    info = json.loads(out)
    assert info["kvstore"] == "etcd" and info["routing"] == "native"
    assert [m["name"] for m in info["etcd"]] == ["cilia-etcd-1", "cilia-etcd-2", "cilia-etcd-3"]


def assert_nothing_left() -> None:
    assert cilia_namespaces() == []
    assert not ETCD_RUN_ROOT.exists() and not ETCD_STATE_ROOT.exists()
    assert not (RUN_ROOT / "lab").exists()
    assert not any((RUN_ROOT / n).exists() for n in ("n1", "n2", "n3"))


def test_down_removes_members_data_and_sockets() -> None:
    cleanup_leftovers()
    lab = Lab.up(parse_topology({**SMALL, "pods": []}, "SMALL"))
    pids = [lab.etcd.pid(name) for name in lab.etcd_members]
    assert all(pids)
    subprocess.run([CILIA, "lab", "down"], check=True, capture_output=True, timeout=180)
    assert all(exited(int(pid)) for pid in pids if pid)
    assert_nothing_left()


def test_sweep_after_a_crash_removes_members() -> None:
    cleanup_leftovers()
    lab = Lab.up(parse_topology({"kvstore": "etcd", "nodes": [{"name": "n1"}, {"name": "n2"}]}, "two nodes"))
    pids = [int(lab.etcd.pid(name) or 0) for name in lab.etcd_members]
    agent = int(lab.state["nodes"]["n1"]["agent_pid"])
    os.kill(agent, 9)  # a crashed run: the agent gone, the state file lost, members left running
    os.waitpid(agent, 0)
    STATE_FILE.unlink()
    subprocess.run([CILIA, "lab", "down"], check=True, capture_output=True, timeout=180)
    assert all(exited(pid) for pid in pids)
    assert_nothing_left()
