"""The agent's end of the proxies' access log: a thread reads the unix datagram socket
(`NodePaths.accesslog_socket`; a datagram holds one record or several, newline-separated),
decodes each record (`cilia.proxy.accesslog.decode`) and adds it to the flow ring, made an L7
flow (`cilia.flows.l7`) when first read, where the Hubble server, `observe`, the metrics and
the exporter see it as they see the datapath's flows (whose records are built when read too; the
endpoints a flow names are looked up then).

A record that does not decode is logged with the reason (the first few, then every 1000th, so a
broken sender cannot flood the log), counted in `invalid` and skipped; the proxies never wait
for the agent (their sends are fire-and-forget), so with the agent down their records are lost,
not queued."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path

from cilia.flows.build import Flow
from cilia.flows.l7 import L7FlowBuilder
from cilia.flows.ring import FlowRing
from cilia.fqdn.history import DnsHistory
from cilia.proxy.accesslog import MAX_DATAGRAM, AccessRecord, decode

log = logging.getLogger(__name__)
RECEIVE_BUFFER = 4 * 1024 * 1024  # bursts of records while the thread is busy
POLL_SECONDS = 0.2  # how soon close() is noticed
_LOGGED_FIRST = 10


class AccessLogReader:
    def __init__(self, path: Path, builder: L7FlowBuilder, ring: FlowRing, history: DnsHistory | None = None,
                 ) -> None:
        self.path = path
        self.history = history
        self.builder = builder
        self.ring = ring
        self.received = 0
        self.invalid = 0
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        """Bind the socket (a stale one from an earlier agent is replaced), root-only."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):  # capped by net.core.rmem_max; a smaller one still works
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            sock.settimeout(POLL_SECONDS)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def handle(self, data: bytes) -> bool:
        """One datagram (one record, or several separated by newlines: AccessLogSender.send_soon)
        -> a flow in the ring per record; False when one did not decode (logged, counted)."""
        if b"\n" not in data:
            return self._record(data)
        ok = True
        for part in data.split(b"\n"):
            if part:
                ok = self._record(part) and ok
        return ok

    def _record(self, data: bytes) -> bool:
        self.received += 1
        try:
            record = decode(data)
        except ValueError as exc:
            self.invalid += 1
            if self.invalid <= _LOGGED_FIRST or self.invalid % 1000 == 0:
                log.warning("access log: record skipped (%d so far): %s", self.invalid, exc)
            return False
        dns = record.dns
        if (self.history is not None and dns is not None and record.type == "RESPONSE"
                and record.verdict == "FORWARDED" and dns.ips):
            # before the pod has its answer: its first connection's flows are named
            self.history.learn(record.endpoint_id, [dns.query, *dns.cnames], dns.ips)
        # built when first read (as the datapath's records): an L7 flow costs the agent more to build
        # than the proxy spent on the request, and most are never read (the tap that must see every
        # flow, for the metrics or the exporter, builds them within its CPU budget)
        self.ring.add_lazy(lambda: self._build(record))
        return True

    def _build(self, record: AccessRecord) -> Flow | None:
        try:
            return self.builder.build(record)
        except Exception:  # one flow that cannot be built must not fail its reader (None: skipped)
            self.invalid += 1
            log.exception("access log: a record could not be made a flow")
            return None

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                data = sock.recv(MAX_DATAGRAM + 1024)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("access log: receive failed")
                self._stop.wait(POLL_SECONDS)  # bounded: the loop cannot spin on a broken socket
                continue
            try:
                self.handle(data)
            except Exception:  # a flow that cannot be built must not end the reader
                self.invalid += 1
                log.exception("access log: a record could not be made a flow")

    def start(self) -> None:
        if self._sock is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name="accesslog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
