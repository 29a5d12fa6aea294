"""Generates the Python protobuf and gRPC modules from proto/ into _generated/ (grpcio-tools).

Run by `make proto` (part of `make install`) and, when they are missing or stale, on first import
by cilia.hubble.pb. The .proto files import each other as "flow/flow.proto" like Hubble's do, so
protoc writes top-level imports (`from flow import flow_pb2`); they are rewritten to this
package. The output is built in a temporary directory and moved into place whole, so a
concurrent reader never sees half of it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE / "proto"
OUT_DIR = HERE / "_generated"
PACKAGE = "cilia.hubble._generated"
PROTOS = ("flow/flow.proto", "relay/relay.proto", "observer/observer.proto", "peer/peer.proto")
STAMP = "SOURCE_SHA256"
_IMPORT = re.compile(r"^(from|import) (flow|relay|observer|peer)(\.| )", re.MULTILINE)


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in PROTOS:
        digest.update(name.encode() + b"\0" + (PROTO_DIR / name).read_bytes())
    return digest.hexdigest()


def is_current() -> bool:
    stamp = OUT_DIR / STAMP
    return stamp.is_file() and stamp.read_text().strip() == source_hash()


def generate() -> Path:
    from grpc_tools import protoc  # build-time dependency (grpcio-tools)

    # protoc's own include dir holds google/protobuf/*.proto (timestamp, wrappers, ...).
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    work = Path(tempfile.mkdtemp(prefix=".gen-", dir=HERE))
    try:
        args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={work}",
                f"--pyi_out={work}", f"--grpc_python_out={work}", *PROTOS]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTOS)}")
        for path in work.rglob("*.py*"):
            text = _IMPORT.sub(lambda m: f"{m.group(1)} {PACKAGE}.{m.group(2)}{m.group(3)}", path.read_text())
            path.write_text(text)
        for directory in [work, *(p for p in work.rglob("*") if p.is_dir())]:
            (directory / "__init__.py").touch()
        (work / STAMP).write_text(source_hash() + "\n")
        os.chmod(work, 0o755)
        old = HERE / f".old-{os.getpid()}"
        try:
            if OUT_DIR.exists():
                OUT_DIR.rename(old)
            work.rename(OUT_DIR)
        except OSError:
            if not is_current():  # another process generating at the same time won the race: fine
                raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return OUT_DIR


def ensure() -> None:
    """Generate unless the output matches the .proto files."""
    if not is_current():
        generate()


def main() -> int:
    generate()
    print(f"generated {', '.join(PROTOS)} -> {OUT_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
