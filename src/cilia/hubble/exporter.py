"""Hubble's flow exporter (`--hubble-export-file-path`): every flow as one JSON line,
`{"flow": {...}, "node_name": "...", "time": "..."}`, the way upstream's exporter writes them
(protojson with the .proto field names: `source_port`, `IP`, `Type`, enums by name), appended to a
file that is rotated by size like upstream's (lumberjack): when a line would take the file past
`--hubble-export-file-max-size-mb`, it is renamed `<name>-<UTC time><ext>` and a new one started;
only the newest `--hubble-export-file-max-backups` of those are kept.

`--hubble-export-allowlist` / `--hubble-export-denylist` take Hubble FlowFilters as JSON
(`{"verdict":["DROPPED"]}`, one filter per value, upstream's flags), with observe's semantics.
Fed by a `cilia.flows.tap.FlowTap`, so exporting never runs on the event pump's thread."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format

from cilia.hubble.convert import convert
from cilia.hubble.filters import FilterError, FlowFilters
from cilia.hubble.pb import flow_pb2, observer_pb2

log = logging.getLogger(__name__)
MB = 1024 * 1024


class ExportFilterError(ValueError):
    """An allow/deny filter that is not a Hubble FlowFilter in JSON; names the flag."""


def parse_filters(values: Sequence[str], flag: str) -> list[flow_pb2.FlowFilter]:
    filters = []
    for text in values:
        for line in text.splitlines():  # upstream also takes one filter per line
            if not line.strip():
                continue
            try:
                filters.append(json_format.Parse(line, flow_pb2.FlowFilter()))
            except json_format.ParseError as exc:
                raise ExportFilterError(f"{flag} {line!r}: not a FlowFilter in JSON: {exc}") from exc
    try:
        FlowFilters(filters, [])  # fail at start-up, not at the first flow
    except FilterError as exc:
        raise ExportFilterError(f"{flag}: {exc}") from exc
    return filters


def export_line(message: flow_pb2.Flow) -> str:
    event = observer_pb2.GetFlowsResponse(flow=message, node_name=message.node_name)
    event.time.CopyFrom(message.time)
    data = json_format.MessageToDict(event, preserving_proto_field_name=True)
    return json.dumps(data, separators=(",", ":"))


class RotatingFile:
    """Appends lines; rotates by size (lumberjack's naming), keeps `max_backups` rotated files."""

    def __init__(self, path: Path, max_bytes: int, max_backups: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_backups = max_backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across writes
        self._size = path.stat().st_size
        self.rotations = 0

    def write(self, line: str) -> None:
        data = line + "\n"
        size = len(data.encode())
        if self.max_bytes and self._size and self._size + size > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._size += size

    def _backup_name(self) -> Path:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H-%M-%S.%f")[:-3]
        candidate = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        n = 1
        while candidate.exists():  # two rotations in one millisecond
            candidate = self.path.with_name(f"{self.path.stem}-{stamp}.{n}{self.path.suffix}")
            n += 1
        return candidate

    def backups(self) -> list[Path]:
        """Rotated files, oldest first (by last write: two rotated within a millisecond share the
        name's timestamp)."""
        prefix, suffix = f"{self.path.stem}-", self.path.suffix
        found = [p for p in self.path.parent.iterdir()
                 if p.name.startswith(prefix) and p.name.endswith(suffix) and p != self.path]
        return sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def _rotate(self) -> None:
        self._file.close()
        os.replace(self.path, self._backup_name())
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0
        self.rotations += 1
        backups = self.backups()
        for old in backups[:max(0, len(backups) - self.max_backups)]:
            old.unlink(missing_ok=True)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class FlowExporter:
    """A FlowConsumer (cilia.flows.tap) writing the flows that pass the filters."""

    def __init__(self, path: Path, max_size_mb: int = 10, max_backups: int = 5,
                 allow: Sequence[flow_pb2.FlowFilter] = (), deny: Sequence[flow_pb2.FlowFilter] = ()) -> None:
        self.file = RotatingFile(path, max_size_mb * MB, max_backups)
        self.filters = FlowFilters(list(allow), list(deny))
        self.exported = 0
        self.lost = 0
        self.errors = 0

    def consume(self, flow: Mapping[str, Any]) -> None:
        try:
            message = convert(flow)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.errors += 1
            if self.errors == 1:
                log.exception("a flow could not be exported (further ones are only counted)")
            return
        if self.filters.matches(message):
            self.file.write(export_line(message))
            self.exported += 1

    def flush(self) -> None:
        self.file.flush()

    def missed(self, count: int) -> None:
        self.lost += count

    def close(self) -> None:
        self.file.close()
