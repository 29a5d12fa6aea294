"""Certificates for a lab's etcd with TLS (`etcd: {tls: true}`), made with Debian's openssl: a CA of
the lab's own, a server certificate per member (its addresses as IP SANs, usable as client too, for
the peers' and its own health checks) and a client certificate per node. EC P-256 keys, valid two
days: a lab is short-lived, and its files are removed with it (they live in the lab's run dir)."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cilia.lab.errors import LabError

DAYS = "2"
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise LabError(f"openssl {args[0]}: {result.stderr.strip()[-500:]}")


def make_ca(directory: Path, name: str = "cilia-lab-etcd-ca") -> CertPair:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pair = CertPair(directory / "ca.crt", directory / "ca.key")
    _openssl("req", "-x509", *_KEY, "-keyout", str(pair.key), "-out", str(pair.cert), "-days", DAYS,
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return pair


def issue(ca: CertPair, directory: Path, name: str, addresses: Sequence[str] = (), dns: Sequence[str] = (),
          server: bool = False) -> CertPair:
    """A certificate for `name` signed by `ca`: client auth always, server auth (with the SANs)
    when `server`."""
    pair = CertPair(directory / f"{name}.crt", directory / f"{name}.key")
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", *_KEY, "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={name}",
             cwd=directory)
    sans = [f"IP:{ipaddress.ip_address(a)}" for a in addresses] + [f"DNS:{d}" for d in dns]
    usage = "serverAuth,clientAuth" if server else "clientAuth"
    extensions = directory / f"{name}.ext"
    extensions.write_text("\n".join([
        "basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}", *([f"subjectAltName={','.join(sans)}"] if sans else []), ""]))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
             "-out", str(pair.cert), "-days", DAYS, "-extfile", str(extensions), cwd=directory)
    csr.unlink()
    extensions.unlink()
    return pair
