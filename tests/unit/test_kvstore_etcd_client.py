"""EtcdClient without an etcd: endpoint parsing (URLs, IPv6, gRPC unix targets) and the error of
a store nobody answers for (every endpoint named, within the deadline)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cilia.kvstore.api import KvError
from cilia.kvstore.etcd import EtcdClient, parse_endpoint


@pytest.mark.parametrize(("text", "expected"), [
    ("http://192.0.2.201:2379", ("192.0.2.201", 2379)),
    ("http://[fd00:c1a::c9]:2379", ("[fd00:c1a::c9]", 2379)),
    ("192.0.2.201:23790", ("192.0.2.201", 23790)),
    ("http://etcd-0", ("etcd-0", 2379)),
    ("unix:/run/cilia/etcd/x/etcd.sock:23790", ("unix:/run/cilia/etcd/x/etcd.sock", 23790)),
    ("https://192.0.2.201:2379", ("192.0.2.201", 2379)),  # TLS (cilia.kvstore.tls)
])
def test_endpoints(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("ftp://192.0.2.201:2379", "only http:// .* and https://"),
    ("unix:/run/cilia/etcd.sock", "needs a port"),
    ("http://:2379", "no host"),
    ("http://192.0.2.1:99999", "99999"),
])
def test_unusable_endpoints(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoint(text)


def test_nobody_answers_names_every_endpoint_within_the_deadline(tmp_path: Path) -> None:
    endpoints = [f"unix:{tmp_path}/a.sock:1", f"unix:{tmp_path}/b.sock:2"]
    client = EtcdClient(endpoints, timeout=2)
    try:
        start = time.monotonic()
        with pytest.raises(KvError) as caught:
            client.put("cilia/x", b"1")
        assert time.monotonic() - start < 3
        for endpoint in endpoints:
            assert endpoint in str(caught.value)
        status = client.status()
        assert not status.reachable and "a.sock" in status.error
        errors: list[Exception] = []
        client.watch_prefix("cilia/", 1, lambda events, revision: None, errors.append)
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        assert errors and isinstance(errors[0], KvError) and ".sock" in str(errors[0])
    finally:
        client.close()
    with pytest.raises(KvError, match="closed"):
        client.get("cilia/x")
