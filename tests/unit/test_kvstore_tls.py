"""etcd TLS settings without an etcd: Cilium's etcd config file (endpoints, trusted-ca-file,
cert-file, key-file) and the agent's --kvstore-tls-* / --kvstore-opt flags (flags win), errors that
name the file or key, endpoint schemes, and what a failed handshake's details mean in words."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cilia.agent.config import parse_config
from cilia.kvstore.etcd import parse_target
from cilia.kvstore.tls import KvTls, KvTlsError, handshake_hint, load_etcd_config

BASE = ["--node", "n1", "--ipv4-pod-cidr", "10.200.1.0/24", "--kvstore", "etcd"]
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make certificates")


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl")
    from cilia.lab import certs

    ca = certs.make_ca(tmp_path)
    certs.issue(ca, tmp_path, "client")
    return tmp_path


def test_cilium_etcd_config_file(tmp_path: Path) -> None:
    config = tmp_path / "etcd.config"
    config.write_text("---\nendpoints:\n- https://192.0.2.201:2379\n- https://192.0.2.202:2379\n"
                      "trusted-ca-file: 'ca.crt'\nkey-file: /etc/x/client.key\ncert-file: /etc/x/client.crt\n")
    loaded = load_etcd_config(config)
    assert loaded.endpoints == ("https://192.0.2.201:2379", "https://192.0.2.202:2379")
    assert loaded.tls == KvTls(tmp_path / "ca.crt", Path("/etc/x/client.crt"), Path("/etc/x/client.key"))
    config.write_text("endpoints: [http://192.0.2.201:2379]\nca-file: /ca.pem\n")  # Cilium's older key
    assert load_etcd_config(config).tls == KvTls(Path("/ca.pem"))
    config.write_text("endpoints: [http://192.0.2.201:2379]\n")
    assert load_etcd_config(config).tls is None


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "must be a mapping"),
    ("endpoints: [x]\ntrusted-ca: /ca.pem\n", "unknown key 'trusted-ca'"),
    ("endpoints: 5\n", "endpoints: must be a list"),
    ("endpoints: [x]\ncert-file: /c.pem\n", "a client certificate and its key go together"),
    ("endpoints: [x]\nkey-file: 7\n", "key-file: must be a file name"),
    ("a: [\n", "etcd config"),
])
def test_bad_etcd_config_files(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "etcd.config"
    config.write_text(text)
    with pytest.raises(KvTlsError, match=message) as info:
        load_etcd_config(config)
    assert str(config) in str(info.value)


def test_flags_and_the_config_file(pki: Path, tmp_path: Path) -> None:
    flags = parse_config([*BASE, "--kvstore-endpoints", "https://192.0.2.201:2379", "--kvstore-tls-ca",
                          str(pki / "ca.crt"), "--kvstore-tls-cert", str(pki / "client.crt"), "--kvstore-tls-key",
                          str(pki / "client.key")])
    assert flags.kvstore_tls == KvTls(pki / "ca.crt", pki / "client.crt", pki / "client.key")
    config = tmp_path / "etcd.config"
    config.write_text(f"endpoints: [https://192.0.2.201:2379, https://192.0.2.202:2379]\n"
                      f"trusted-ca-file: {pki / 'ca.crt'}\ncert-file: {pki / 'client.crt'}\n"
                      f"key-file: {pki / 'client.key'}\n")
    from_file = parse_config([*BASE, "--kvstore-opt", f"etcd.config={config}"])
    assert from_file.kvstore_endpoints == ("https://192.0.2.201:2379", "https://192.0.2.202:2379")
    assert from_file.kvstore_tls == flags.kvstore_tls
    # flags win over the file
    both = parse_config([*BASE, "--kvstore-opt", f"etcd.config={config}", "--kvstore-endpoints",
                         "https://192.0.2.203:2379", "--kvstore-tls-ca", str(pki / "client.crt")])
    assert both.kvstore_endpoints == ("https://192.0.2.203:2379",)
    assert both.kvstore_tls is not None and both.kvstore_tls.ca == pki / "client.crt"


@pytest.mark.parametrize(("args", "message"), [
    (["--kvstore-opt", "etcd.address=x"], "the only option is etcd.config=<file>"),
    (["--kvstore-endpoints", "https://h:2379", "--kvstore-tls-ca", "/nonexistent/ca.crt"],
     "the CA /nonexistent/ca.crt: No such file"),
    (["--kvstore-endpoints", "https://h:2379", "--kvstore-tls-cert", "/c.crt"], "go together"),
    (["--kvstore-opt", "etcd.config=/nonexistent/etcd.config"], "etcd config /nonexistent/etcd.config"),
])
def test_bad_tls_flags_name_what_is_wrong(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_config([*BASE, *args])
    assert message in capsys.readouterr().err


def test_a_file_that_is_not_pem(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(KvTlsError, match="is not PEM"):
        KvTls(tmp_path / "ca.crt").credentials()


def test_endpoint_schemes() -> None:
    assert parse_target("https://192.0.2.201:2379") == ("192.0.2.201", 2379, "https")
    assert parse_target("http://192.0.2.201:2379") == ("192.0.2.201", 2379, "http")
    assert parse_target("192.0.2.201:2379") == ("192.0.2.201", 2379, "")  # TLS when TLS files are given
    assert parse_target("unix:/run/x/etcd.sock:2379") == ("unix:/run/x/etcd.sock", 2379, "unix")


def test_handshake_hints() -> None:
    assert "not signed by a trusted CA" in handshake_hint(
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:192.0.2.201:2379: Ssl handshake failed: "
        "SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED")
    assert "requires a client certificate" in handshake_hint("... tlsv13 alert certificate required")
    assert "client certificate" in handshake_hint(
        "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:192.0.2.201:2379: Unwrap failed "
        "(TSI_DATA_CORRUPTED)")
    assert handshake_hint("connection refused") == ""


@needs_openssl
def test_lab_certificates_verify(tmp_path: Path) -> None:
    from cilia.lab import certs

    ca = certs.make_ca(tmp_path)
    server = certs.issue(ca, tmp_path, "m1", ["192.0.2.201", "fd00:c1a::c9"], ["localhost"], server=True)
    out = subprocess.run(["openssl", "verify", "-CAfile", str(ca.cert), str(server.cert)], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(server.cert), "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout
    assert "IP Address:192.0.2.201" in text and "TLS Web Server Authentication" in text
