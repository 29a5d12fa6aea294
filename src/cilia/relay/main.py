"""`cilia-relay`: Hubble Relay for cilia (docs/observability.md#relay).

    cilia-relay --peer n1=unix:///run/cilia/n1/hubble.sock --peer n2=unix:///run/cilia/n2/hubble.sock
    cilia-relay --kvstore-endpoints http://192.0.2.201:2379 --peer-address-template '{ipv4}:4244'
    cilia-relay --peer-service unix:///run/cilia/n1/hubble.sock
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from cilia.hubble.server import TlsFiles
from cilia.kvstore.etcd import EtcdClient
from cilia.relay.discovery import (
    DEFAULT_ADDRESS_TEMPLATE,
    DiscoveryError,
    PeerServiceSource,
    RegistrySource,
    Source,
    StaticSource,
    parse_peer,
)
from cilia.relay.merge import DEFAULT_WINDOW_S
from cilia.relay.pool import TlsClient
from cilia.relay.server import DEFAULT_SOCKET, Relay, RelayConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cilia-relay", description="Hubble Relay for cilia: every node's flows, "
                                     "merged, on one Observer API; the service map page; /metrics")
    parser.add_argument("--listen-address", default=f"unix://{DEFAULT_SOCKET}",
                        help="where the relay's Observer is served: unix:///path or HOST:PORT (default %(default)s)")
    found = parser.add_argument_group("finding the nodes (any combination)")
    found.add_argument("--peer", action="append", default=[], metavar="[NAME=]ADDRESS",
                       help="a node's Observer, e.g. n1=unix:///run/cilia/n1/hubble.sock (repeatable)")
    found.add_argument("--peer-service", default=None, metavar="ADDRESS",
                       help="an agent's Hubble address whose peer.Peer service lists the cluster's nodes")
    found.add_argument("--kvstore-endpoints", default=None, metavar="URL,URL",
                       help="the cluster's etcd: nodes from its node registry (cilia/nodes/<name>)")
    found.add_argument("--peer-address-template", default=DEFAULT_ADDRESS_TEMPLATE,
                       help="a registry node's Observer address from its record: {name}, {ipv4}, {ipv6} "
                            "(default %(default)s; in the lab unix:///run/cilia/{name}/hubble.sock)")
    parser.add_argument("--tls-hubble-server-ca-files", type=Path, action="append", default=None,
                        help="CAs of the nodes' Hubble certificates (for peers that announce TLS)")
    parser.add_argument("--tls-client-cert-file", type=Path, default=None)
    parser.add_argument("--tls-client-key-file", type=Path, default=None)
    parser.add_argument("--tls-relay-server-cert-file", type=Path, default=None,
                        help="serve the relay's Observer with TLS (a TCP --listen-address) with this certificate")
    parser.add_argument("--tls-relay-server-key-file", type=Path, default=None)
    parser.add_argument("--tls-relay-client-ca-files", type=Path, action="append", default=None,
                        help="require client certificates signed by these CAs (mutual TLS)")
    parser.add_argument("--metrics-listen-address", default=None, metavar="HOST:PORT",
                        help="serve Prometheus /metrics here")
    parser.add_argument("--ui-listen-address", default=None, metavar="HOST:PORT",
                        help="serve the service map page here")
    parser.add_argument("--sort-buffer-drain-timeout", type=float, default=DEFAULT_WINDOW_S, metavar="SECONDS",
                        help="how long a followed flow waits for older ones from quiet nodes (default %(default)s)")
    parser.add_argument("--server-impl", choices=("h2", "grpcio"), default="h2",
                        help="the gRPC server of the relay's Observer: cilia's own over HTTP/2 (default) or grpcio's")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def sources_from(args: argparse.Namespace) -> list[Source]:
    sources: list[Source] = []
    if args.peer:
        sources.append(StaticSource([parse_peer(text) for text in args.peer]))
    if args.peer_service:
        sources.append(PeerServiceSource(args.peer_service))
    if args.kvstore_endpoints:
        # cilia.kvstore's etcd client (failover across members, bounded call deadlines)
        kv = EtcdClient([e for e in args.kvstore_endpoints.split(",") if e])
        sources.append(RegistrySource(kv, args.peer_address_template))
    return sources


def tls_from(args: argparse.Namespace) -> TlsClient | None:
    if not args.tls_hubble_server_ca_files:
        return None
    ca = b"".join(path.read_bytes() for path in args.tls_hubble_server_ca_files)
    cert = args.tls_client_cert_file.read_bytes() if args.tls_client_cert_file else None
    key = args.tls_client_key_file.read_bytes() if args.tls_client_key_file else None
    return TlsClient(ca, cert, key)


async def _serve(relay: Relay) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, relay.stop)
    await relay.run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sources = sources_from(args)
    except DiscoveryError as exc:
        parser.error(str(exc))
    if not sources:
        parser.error("no nodes to relay: give --peer, --peer-service or --kvstore-endpoints")
    if (args.tls_relay_server_cert_file is None) != (args.tls_relay_server_key_file is None):
        parser.error("--tls-relay-server-cert-file and --tls-relay-server-key-file go together")
    if args.tls_relay_server_cert_file is not None and args.listen_address.startswith("unix://"):
        parser.error("TLS needs a TCP --listen-address (a unix socket is protected by its file mode)")
    server_tls = TlsFiles(args.tls_relay_server_cert_file, args.tls_relay_server_key_file,
                          tuple(args.tls_relay_client_ca_files or ())) if args.tls_relay_server_cert_file else None
    config = RelayConfig(args.listen_address, args.metrics_listen_address, args.ui_listen_address,
                         args.sort_buffer_drain_timeout, tls_from(args), server_tls, args.server_impl)
    try:
        asyncio.run(_serve(Relay(config, sources)))
    except OSError as exc:
        print(f"cilia-relay: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
