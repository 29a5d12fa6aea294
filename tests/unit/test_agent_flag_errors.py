"""A bad CIDR flag's error names the flag it was given to (several flags share one parser)."""

from __future__ import annotations

import pytest

from cilia.agent.config import parse_config

ETCD = ["--kvstore", "etcd", "--kvstore-endpoints", "http://192.0.2.201:2379"]


@pytest.mark.parametrize(("argv", "flag"), [
    (["--ipv4-pod-cidr", "10.0.0.1/24"], "--ipv4-pod-cidr"),
    (["--ipv6-pod-cidr", "fd00::1/64"], "--ipv6-pod-cidr"),
    ([*ETCD, "--cluster-pool-ipv4-cidr", "10.200.0.1/16"], "--cluster-pool-ipv4-cidr"),
    ([*ETCD, "--cluster-pool-ipv6-cidr", "fd00:200::1/48"], "--cluster-pool-ipv6-cidr"),
    (["--ipv4-pod-cidr", "10.0.0.0/24", "--ipv4-native-routing-cidr", "10.0.0.1/8"], "--ipv4-native-routing-cidr"),
])
def test_bad_cidr_error_names_its_flag(argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config(argv)
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "host bits set" in err, err
    others = {"--ipv4-pod-cidr", "--ipv6-pod-cidr", "--service-cidr"} - {flag}
    assert not any(f"{other} '" in err for other in others), err
