"""The connectivity-matrix tool the policy tests stand on: a full matrix in about one probe timeout,
every verdict right with no policy, IPv6, closed ports refused fast, external hosts reaching pods."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from cilia.lab.lab import PYTHON, Lab
from cilia.lab.topology import parse_topology
from cilia.testing.labs import running_lab
from cilia.testing.reach import (
    Key,
    Target,
    expect_all,
    format_mismatches,
    pod_names,
    pod_targets,
    policy_topology,
    probe_matrix,
    probe_rows,
)


@pytest.fixture(scope="module")
def mlab() -> Iterator[Lab]:
    with running_lab(parse_topology(policy_topology(), "policy_topology()")) as running:
        yield running


def full_rows() -> dict[str, list[Target]]:
    """9 pods x 9 pods x 3 ports, each pod -> world1 tcp 80, world1 -> each pod tcp 80."""
    rows = {pod: [*pod_targets(), Target("world1", 80)] for pod in pod_names()}
    rows["world1"] = [Target(pod, 80) for pod in pod_names()]
    return rows


def test_topology_shape() -> None:
    topology = parse_topology(policy_topology())
    assert {ns: labels for ns, labels in topology.namespaces.items() if ns != "default"} == {
        "x": {"ns": "x"}, "y": {"ns": "y"}, "z": {"ns": "z"}}
    assert sorted(f"{p.namespace}/{p.name}" for p in topology.pods) == sorted(pod_names())
    assert all(p.labels == {"pod": p.name} for p in topology.pods)
    assert all({(q.port, q.protocol) for q in p.ports} == {(80, "tcp"), (81, "tcp"), (80, "udp")}
               for p in topology.pods)
    externals = [(e.name, [(q.port, q.protocol) for q in e.ports]) for e in topology.externals]
    assert externals == [("world1", [(80, "tcp")])]


def test_full_matrix_without_policy_is_reachable_and_fast(mlab: Lab) -> None:
    rows = full_rows()
    expected: dict[Key, bool] = expect_all((s, t.name, t.port, t.protocol) for s, ts in rows.items() for t in ts)
    assert len(expected) == 9 * 9 * 3 + 9 + 9
    start = time.monotonic()
    actual = probe_rows(mlab, rows, timeout=1.0)
    took = time.monotonic() - start
    print(f"\nfull matrix: {len(actual)} probes from {len(rows)} sources in {took:.2f} s")
    assert set(actual) == set(expected)
    mismatches = format_mismatches(expected, actual)
    assert not mismatches, "with no policy everything must be reachable:\n" + mismatches
    assert took < 20, f"the matrix took {took:.1f} s"


def test_sources_times_targets_shape(mlab: Lab) -> None:
    targets = [Target("y/b", 81), Target("z/c", 80, "udp"), Target("world1", 80)]
    got = probe_matrix(mlab, ["x/a", "z/b"], targets)
    assert got == expect_all((s, t.name, t.port, t.protocol) for s in ("x/a", "z/b") for t in targets)


def test_ipv6_row(mlab: Lab) -> None:
    targets = [*pod_targets(), Target("world1", 80)]
    start = time.monotonic()
    got = probe_matrix(mlab, ["x/a", "world1"], targets, ipv6=True)
    print(f"\nIPv6 rows: {len(got)} probes in {time.monotonic() - start:.2f} s")
    expected = expect_all(got)
    assert not format_mismatches(expected, got), format_mismatches(expected, got)
    assert len(got) == 2 * (27 + 1)


def test_closed_port_is_refused_quickly(mlab: Lab) -> None:
    start = time.monotonic()
    verdict = mlab.probe("x/a", "y/b", 9, timeout=3.0)
    took = time.monotonic() - start
    assert verdict["verdict"] == "refused", verdict
    assert took < 2.5, f"a refused probe must not wait out its timeout ({took:.2f} s)"
    # in a matrix too: closed TCP and UDP ports are not connected, open ones still are
    targets = [Target("y/b", 9), Target("y/b", 9, "udp"), Target("y/b", 80)]
    got = probe_matrix(mlab, ["x/a"], targets, timeout=3.0)
    assert got == {("x/a", "y/b", 9, "tcp"): False, ("x/a", "y/b", 9, "udp"): False, ("x/a", "y/b", 80, "tcp"): True}


def test_many_keeps_order_and_single_mode_unchanged(mlab: Lab) -> None:
    request = [{"to": mlab.address_of(name), "port": port, "protocol": protocol}
               for name, port, protocol in (("z/c", 81, "tcp"), ("x/b", 80, "udp"), ("y/a", 9, "tcp"),
                                            ("world1", 80, "tcp"))]
    result = mlab.exec("x/a", [PYTHON, "-m", "cilia.lab.probe", "--many", json.dumps(request), "--timeout", "1"])
    answers = json.loads(result.stdout)
    assert [(a["to"], a["port"], a["protocol"]) for a in answers] == [(r["to"], r["port"], r["protocol"])
                                                                       for r in request]
    assert [a["verdict"] for a in answers] == ["connected", "connected", "refused", "connected"]
    assert [a.get("peer") for a in answers] == ["c", "b", None, "world1"]
    # the single-target mode: one JSON verdict, exit status 0 only when connected
    single = mlab.exec("x/a", [PYTHON, "-m", "cilia.lab.probe", "--to", mlab.address_of("y/c"), "--port", "80",
                               "--protocol", "udp", "--timeout", "1"])
    assert single.returncode == 0 and json.loads(single.stdout)["peer"] == "c"
    closed = mlab.exec("x/a", [PYTHON, "-m", "cilia.lab.probe", "--to", mlab.address_of("y/c"), "--port", "9"])
    assert closed.returncode == 1 and json.loads(closed.stdout)["verdict"] == "refused"
