"""Endpoint records on disk (one JSON file each) and endpoint id allocation."""

from __future__ import annotations

import logging
from pathlib import Path

from cilia.endpoint.record import EndpointRecord
from cilia.jsonfile import read_json, write_json

log = logging.getLogger(__name__)
MAX_ENDPOINT_ID = 65535


class EndpointStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._reserved: set[int] = set()

    def _path(self, endpoint_id: int) -> Path:
        return self.directory / f"{endpoint_id}.json"

    def allocate_id(self) -> int:
        """Lowest id with no file on disk and not handed out by this process yet."""
        used = {int(p.stem) for p in self.directory.glob("*.json") if p.stem.isdigit()} | self._reserved
        for candidate in range(1, MAX_ENDPOINT_ID + 1):
            if candidate not in used:
                self._reserved.add(candidate)
                return candidate
        raise RuntimeError(f"all {MAX_ENDPOINT_ID} endpoint ids are in use")

    def save(self, record: EndpointRecord) -> None:
        write_json(self._path(record.id), record.to_json())

    def remove(self, endpoint_id: int) -> None:
        self._path(endpoint_id).unlink(missing_ok=True)
        self._reserved.discard(endpoint_id)

    def load_all(self) -> list[EndpointRecord]:
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(EndpointRecord.from_json(read_json(path, {})))
            except (TypeError, ValueError, KeyError):
                log.exception("endpoint state %s is unreadable; skipping it", path)
        return records
