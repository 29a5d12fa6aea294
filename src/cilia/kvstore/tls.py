"""TLS towards etcd: the files a client needs (`--kvstore-tls-ca/-cert/-key`, or Cilium's etcd
config file given as `--kvstore-opt etcd.config=<file>`), the gRPC channel credentials made of them,
and what a failed handshake means in words.

Cilium's etcd config file is YAML: `endpoints` (a list of URLs), `trusted-ca-file` (older: `ca-file`),
`cert-file` and `key-file` (client authentication). The same keys are read here; anything else in
it is refused, so a typo does not silently turn TLS off."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml

CONFIG_KEYS = ("endpoints", "trusted-ca-file", "ca-file", "cert-file", "key-file")


class KvTlsError(ValueError):
    """Unusable TLS settings (names the file or the key)."""


@dataclass(frozen=True)
class KvTls:
    """A client's TLS files: the CA its members' certificates are checked against (None: the
    system's roots) and, for client authentication, a certificate with its key."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise KvTlsError("a client certificate and its key go together (--kvstore-tls-cert with "
                             "--kvstore-tls-key; cert-file with key-file)")

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files now (KvTlsError naming one that cannot be read)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, "CA") if self.ca else None,
            private_key=_read(self.key, "client key") if self.key else None,
            certificate_chain=_read(self.cert, "client certificate") if self.cert else None)


@dataclass(frozen=True)
class EtcdConfigFile:
    endpoints: tuple[str, ...]
    tls: KvTls | None


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KvTlsError(f"etcd TLS: the {what} {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in data:
        raise KvTlsError(f"etcd TLS: the {what} {path} is not PEM")
    return data


def load_etcd_config(path: Path) -> EtcdConfigFile:
    """Cilium's etcd config file (KvTlsError naming the file and the key). Relative file names
    are taken from the file's directory."""
    try:
        doc: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise KvTlsError(f"etcd config {path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise KvTlsError(f"etcd config {path}: must be a mapping with endpoints and trusted-ca-file, "
                         "cert-file, key-file")
    unknown = sorted(set(map(str, doc)) - set(CONFIG_KEYS))
    if unknown:
        raise KvTlsError(f"etcd config {path}: unknown key {unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})")
    endpoints = doc.get("endpoints") or []
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not isinstance(endpoints, list) or not all(isinstance(e, str) and e for e in endpoints):
        raise KvTlsError(f"etcd config {path}: endpoints: must be a list of URLs")

    def file(key: str) -> Path | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise KvTlsError(f"etcd config {path}: {key}: must be a file name")
        return path.parent / value if not Path(value).is_absolute() else Path(value)

    ca = file("trusted-ca-file") or file("ca-file")
    cert, key = file("cert-file"), file("key-file")
    try:
        tls = KvTls(ca, cert, key) if (ca or cert or key) else None
    except KvTlsError as exc:
        raise KvTlsError(f"etcd config {path}: {exc}") from exc
    return EtcdConfigFile(tuple(endpoints), tls)


def handshake_hint(details: str) -> str:
    """What a gRPC error's details say about TLS, in words (empty when nothing)."""
    text = details.lower()
    if "certificate_verify_failed" in text or "certificate verify failed" in text:
        return ("TLS: the member's certificate is not signed by a trusted CA: give the CA that signed "
                "it (--kvstore-tls-ca, or trusted-ca-file in the etcd config)")
    if "certificate required" in text or "bad certificate" in text or "bad_certificate" in text:
        return ("TLS: the member requires a client certificate it trusts (--kvstore-tls-cert and "
                "--kvstore-tls-key, or cert-file and key-file in the etcd config)")
    if "tsi_data_corrupted" in text or "unwrap failed" in text:
        # TLS 1.3: a refused client certificate reaches the client as a broken first record
        return ("TLS: the member ended the session after the handshake, as it does for a missing or "
                "untrusted client certificate (--kvstore-tls-cert and --kvstore-tls-key, or cert-file "
                "and key-file in the etcd config)")
    if "wrong_version_number" in text or "wrong version number" in text or "http/1.x" in text:
        return "TLS: the member and this client disagree on TLS (http:// vs https://)"
    if "ssl" in text or "handshake" in text:
        return "TLS: the handshake with the member failed"
    return ""
