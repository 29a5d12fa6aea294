"""The per-endpoint rules files the agent writes for the proxies, read back by them.

One `<endpoint id>.json` per endpoint in a directory per proxy (HTTP: `proxy_policy_dir`, DNS:
`dns_policy_dir`). A proxy stats the file on every request, so that a change applies to the very
next request, and parses it only when its mtime or size changed. A missing file and a file that
does not parse each map to a policy the caller names: the HTTP proxy judges nothing for a missing
file but denies everything for a broken one, the DNS proxy refuses in both cases (fail closed).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
P = TypeVar("P")


def rules_file(directory: Path, endpoint_id: int) -> Path:
    return directory / f"{endpoint_id}.json"


class RuleFileStore(Generic[P]):
    """An endpoint's parsed rules, re-read when its file changed; `missing`/`broken` otherwise."""

    def __init__(self, directory: Path, parse: Callable[[Any], P], *, missing: P, broken: P,
                 broken_means: str) -> None:
        self.directory = directory
        self._parse = parse
        self._missing = missing
        self._broken = broken
        self._broken_means = broken_means  # for the log line: what the proxy does instead
        self._cache: dict[int, tuple[tuple[int, int], P]] = {}
        self._paths: dict[int, str] = {}

    def get(self, endpoint_id: int) -> P:
        # a str path made once: pathlib's Path building cost more per request than the stat itself
        path = self._paths.get(endpoint_id)
        if path is None:
            path = self._paths[endpoint_id] = str(rules_file(self.directory, endpoint_id))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cache.pop(endpoint_id, None)
            return self._missing
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(endpoint_id)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            with open(path, encoding="utf-8") as file:
                policy = self._parse(json.load(file))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("rules of endpoint %d (%s) unreadable, %s: %s", endpoint_id, path, self._broken_means, exc)
            return self._broken
        self._cache[endpoint_id] = (stamp, policy)
        return policy


def write_rules_file(directory: Path, endpoint_id: int, version: int, body: dict[str, Any]) -> None:
    """The agent's side: replace the file atomically, so a proxy never reads half of it."""
    directory.mkdir(parents=True, exist_ok=True)
    target = rules_file(directory, endpoint_id)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "endpoint_id": endpoint_id, **body}))
    os.replace(tmp, target)


def remove_rules_file(directory: Path, endpoint_id: int) -> None:
    rules_file(directory, endpoint_id).unlink(missing_ok=True)
