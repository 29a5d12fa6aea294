"""The per-endpoint rules files the agent writes for the proxies, read back by them.

One `<endpoint id>.json` per endpoint in a directory per proxy (HTTP: `proxy_policy_dir`, DNS:
`dns_policy_dir`). A missing file and a file that does not parse each map to a policy the caller
names: the HTTP proxy judges nothing for a missing file but denies everything for a broken one,
the DNS proxy refuses in both cases (fail closed).

A change applies to the very next request: the agent changes files only through
`write_rules_file` / `remove_rules_file`, which, after the rename (or unlink), write a new value
into the directory's `generation` file (8 bytes). A proxy maps that file into memory and reads
it on every request (a memory read, no system call); only when it changed does it stat the
endpoint's file again (and parse it when its mtime or size changed). So every request judged
after `write_rules_file` returned is judged by the new file, as when the proxy stat'ed the file
on every request (what it does still when the generation file cannot be mapped). A file changed
by anything else (by hand) is seen at the next change through these functions (an unreadable one
is not remembered: read again at every request, as before), or within `REVALIDATE_S` when the
generation file itself was replaced (its directory recreated).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
P = TypeVar("P")
GENERATION = "generation"
REVALIDATE_S = 1.0  # how often a store checks that its mapped generation file is still the directory's


def rules_file(directory: Path, endpoint_id: int) -> Path:
    return directory / f"{endpoint_id}.json"


def _open_generation(directory: Path) -> int:
    """The directory's generation file (made when missing), 8 bytes at least; its fd."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / GENERATION, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < 8:
            os.ftruncate(fd, 8)  # zeros; a writer racing this one writes its value after
    except BaseException:
        os.close(fd)
        raise
    return fd


def changed(directory: Path) -> None:
    """Tells the proxies that a rules file of `directory` changed (after the rename or unlink):
    a value no reader has seen (random: two writers at once still each leave a new one)."""
    fd = _open_generation(directory)
    try:
        os.pwrite(fd, os.urandom(8), 0)
    finally:
        os.close(fd)


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
        # the rules known current at generation `_seen`: returned without a stat while it holds
        self._current: dict[int, P] = {}
        self._seen = b""
        self._map: mmap.mmap | None = None
        self._mapped_id = (0, 0)  # (st_dev, st_ino) of the mapped file
        self._next_check = 0.0
        self._remap()

    def _remap(self) -> None:
        self._current.clear()
        self._seen = b""
        if self._map is not None:
            self._map.close()
            self._map = None
        try:
            fd = _open_generation(self.directory)
        except OSError as exc:
            log.warning("rules directory %s: no generation file (%s): a stat per request", self.directory, exc)
            return
        try:
            st = os.fstat(fd)
            self._map = mmap.mmap(fd, 8, mmap.MAP_SHARED, mmap.PROT_READ)
            self._mapped_id = (st.st_dev, st.st_ino)
        except (OSError, ValueError) as exc:
            log.warning("rules directory %s: generation file not mapped (%s): a stat per request", self.directory, exc)
        finally:
            os.close(fd)
        self._next_check = time.monotonic() + REVALIDATE_S

    def _revalidate(self) -> None:
        """Whether the mapped generation file is still the directory's (not removed with it)."""
        self._next_check = time.monotonic() + REVALIDATE_S
        try:
            st = os.stat(self.directory / GENERATION)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._mapped_id:
            self._remap()

    def stamp(self) -> bytes | None:
        """The generation now (a memory read), when `get` would look no further than it: a caller
        that saw the same stamp at its last `get` of an endpoint may keep what that returned (but
        a `broken` one, read again every time). None: call `get` (not mapped, or a check is due)."""
        gen = self._map
        if gen is None or time.monotonic() >= self._next_check:
            return None
        return gen[:8]

    def get(self, endpoint_id: int) -> P:
        gen = self._map
        if gen is not None and time.monotonic() >= self._next_check:
            self._revalidate()
            gen = self._map
        if gen is None:
            return self._read(endpoint_id)
        value = gen[:8]
        if value != self._seen:
            self._seen = value
            self._current.clear()
        else:
            current = self._current.get(endpoint_id)
            if current is not None:
                return current
        policy = self._read(endpoint_id)
        if policy is not self._broken:  # an unreadable file is tried again at the next request, as before
            self._current[endpoint_id] = policy
        return policy

    def _read(self, endpoint_id: int) -> P:
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

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


def write_rules_file(directory: Path, endpoint_id: int, version: int, body: dict[str, Any]) -> None:
    """The agent's side: replace the file atomically, so a proxy never reads half of it; then
    bump the generation, so the proxies look at it before their next request."""
    directory.mkdir(parents=True, exist_ok=True)
    target = rules_file(directory, endpoint_id)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "endpoint_id": endpoint_id, **body}))
    os.replace(tmp, target)
    changed(directory)


def remove_rules_file(directory: Path, endpoint_id: int) -> None:
    try:
        rules_file(directory, endpoint_id).unlink()
    except FileNotFoundError:
        return  # nothing changed (the agent removes the file of every endpoint without L7 rules)
    changed(directory)
