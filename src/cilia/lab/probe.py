"""A probe run inside a lab namespace: connect (TCP) or ask (UDP), print a JSON verdict."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _greeting(sock: socket.socket) -> str:
    """Lab TCP servers greet with their name; an HTTP port stays silent, which is fine."""
    sock.settimeout(0.3)
    try:
        return sock.recv(256).decode(errors="replace").strip()
    except (TimeoutError, OSError):
        return ""


def probe(address: str, port: int, protocol: str, timeout: float) -> dict[str, object]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    start = time.monotonic()
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((address, port))
            if protocol == "udp":
                sock.send(b"probe")
                peer = sock.recv(256).decode(errors="replace").strip()
            else:
                peer = _greeting(sock)
        except TimeoutError:
            return {"verdict": "timed-out", "to": address, "port": port, "protocol": protocol}
        except ConnectionRefusedError:
            return {"verdict": "refused", "to": address, "port": port, "protocol": protocol}
        except OSError as exc:
            return {"verdict": "error", "error": str(exc), "to": address, "port": port, "protocol": protocol}
    return {"verdict": "connected", "peer": peer, "to": address, "port": port, "protocol": protocol,
            "rtt_ms": round((time.monotonic() - start) * 1000, 2)}


def probe_many(targets: list[dict[str, Any]], timeout: float) -> list[dict[str, object]]:
    """Every target at once (threads): a whole row of a reachability matrix in one timeout."""
    with ThreadPoolExecutor(max_workers=max(1, min(64, len(targets)))) as pool:
        return list(pool.map(lambda t: probe(str(t["to"]), int(t["port"]), str(t.get("protocol", "tcp")), timeout),
                             targets))


def main() -> None:
    parser = argparse.ArgumentParser(description="cilia lab probe")
    parser.add_argument("--to")
    parser.add_argument("--port", type=int)
    parser.add_argument("--protocol", choices=["tcp", "udp"], default="tcp")
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--many", help='JSON list of {"to", "port", "protocol"}: probed in parallel')
    args = parser.parse_args()
    if args.many:
        sys.stdout.write(json.dumps(probe_many(json.loads(args.many), args.timeout)) + "\n")
        return
    if not args.to or not args.port:
        parser.error("--to and --port (or --many) are required")
    result = probe(args.to, args.port, args.protocol, args.timeout)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.exit(0 if result["verdict"] == "connected" else 1)


if __name__ == "__main__":
    main()
