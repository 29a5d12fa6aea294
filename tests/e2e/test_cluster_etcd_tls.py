"""A 3-node lab on a real 3-member etcd serving its clients over TLS (`etcd: {tls: true}`: the lab's
CA, a server certificate per member, `--client-cert-auth`; the agents get Cilium's etcd config file
through `--kvstore-opt etcd.config=`): every agent talks to its member over https and the cluster
converges (ipcache, pods across nodes); a client without the CA, one without a client certificate
and a plain-HTTP one are refused by the member's TLS port, each with an error saying why."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cilia.lab.lab import PYTHON, Lab
from cilia.lab.process import in_netns
from cilia.testing.cluster import NODES, api, cluster_topology, running_cluster_lab
from cilia.testing.reach import Target, expect_all, format_mismatches, probe_rows

# One EtcdClient call from inside a node's namespace (where the members' TLS addresses are routed):
# prints {"ok": ...} or {"error": ...}
_CLIENT = """
import json, sys
from pathlib import Path
from cilia.kvstore.etcd import EtcdClient
from cilia.kvstore.tls import KvTls
endpoint, ca, cert, key = sys.argv[1:5]
tls = KvTls(Path(ca) if ca else None, Path(cert) if cert else None, Path(key) if key else None) \\
    if (ca or cert) else None
client = EtcdClient([endpoint], timeout=3, tls=tls)
try:
    print(json.dumps({"ok": client.get("cilia/nodes/n1") is not None}))
except Exception as exc:
    print(json.dumps({"error": str(exc)}))
finally:
    client.close()
"""


@pytest.fixture(scope="module")
def tlab() -> Iterator[Lab]:
    with running_cluster_lab(cluster_topology("native", etcd={"members": 3, "tls": True})) as lab:
        yield lab


def call(lab: Lab, endpoint: str, ca: str = "", cert: str = "", key: str = "") -> dict[str, object]:
    netns = lab.state["nodes"]["n1"]["netns"]
    out = subprocess.run(in_netns(netns, PYTHON, "-c", _CLIENT, endpoint, ca, cert, key), capture_output=True,
                         text=True, timeout=30, check=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def tls_files(lab: Lab) -> tuple[str, str, str]:
    directory = Path(lab.state["etcd"]["tls_dir"])
    return str(directory / "ca.crt"), str(directory / "cilia-agent.crt"), str(directory / "cilia-agent.key")


def test_agents_talk_to_etcd_over_tls(tlab: Lab) -> None:
    for node in NODES:
        with api(node) as client:
            kvstore = client.status().kvstore
        assert kvstore is not None and kvstore.reachable and kvstore.lease, (node, kvstore)
        assert kvstore.endpoint.startswith("https://192.0.2.20"), (node, kvstore)
    # the agents were given Cilium's etcd config file, and it names https endpoints and the files
    args = tlab.state["cluster_args"]
    config = Path(args[args.index("--kvstore-opt") + 1].removeprefix("etcd.config="))
    text = config.read_text()
    assert "https://192.0.2.201:2379" in text and "trusted-ca-file" in text and "cert-file" in text
    assert "--kvstore-endpoints" not in args
    got = probe_rows(tlab, {"client1": [Target("web2", 80), Target("web3", 53, "udp")]}, timeout=2.0)
    assert not format_mismatches(expect_all(got), got), format_mismatches(expect_all(got), got)


def test_a_client_with_the_lab_certificates_is_served(tlab: Lab) -> None:
    ca, cert, key = tls_files(tlab)
    assert call(tlab, "https://192.0.2.202:2379", ca, cert, key) == {"ok": True}


def test_a_client_without_the_ca_is_refused_and_told_why(tlab: Lab) -> None:
    _ca, cert, key = tls_files(tlab)
    got = call(tlab, "https://192.0.2.201:2379", "", cert, key)  # the system's roots: not the lab's CA
    error = str(got.get("error", ""))
    assert "https://192.0.2.201:2379" in error and "not signed by a trusted CA" in error, got
    assert "--kvstore-tls-ca" in error, got


def test_a_client_without_a_certificate_is_refused(tlab: Lab) -> None:
    ca, _cert, _key = tls_files(tlab)
    got = call(tlab, "https://192.0.2.201:2379", ca)
    error = str(got.get("error", ""))
    assert "https://192.0.2.201:2379" in error and "client certificate" in error, got


def test_plain_http_to_the_tls_port_is_refused(tlab: Lab) -> None:
    got = call(tlab, "http://192.0.2.201:2379")
    assert "error" in got and "http://192.0.2.201:2379" in str(got["error"]), got
