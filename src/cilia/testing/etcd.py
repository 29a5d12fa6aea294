"""A real etcd for tests: `with running_etcd(3) as cluster:` members in one namespace of their own
(`cilia-etcd-test`, on its loopback), reached from the test process through their unix sockets
(`cluster.unix_endpoints`). Always stopped and removed, also when the body fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

from cilia.lab.etcd import EtcdCluster, EtcdMemberSpec, stop_leftover_members
from cilia.lab.process import sh

TEST_NETNS = "cilia-etcd-test"


@contextmanager
def running_etcd(members: int = 1, netns: str = TEST_NETNS) -> Iterator[EtcdCluster]:
    stop_leftover_members()
    sh("ip", "netns", "delete", netns, check=False)
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    cluster = EtcdCluster([
        EtcdMemberSpec(f"cilia-etcd-t{i}", netns, "127.0.0.1", client_port=23790 + 10 * i,
                       peer_port=23791 + 10 * i)
        for i in range(members)
    ], token=f"{netns}-{members}")
    try:
        cluster.start()
        yield cluster
    finally:
        with suppress(Exception):
            cluster.stop()
        sh("ip", "netns", "delete", netns, check=False)
