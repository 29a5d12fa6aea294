"""The bpf layer's error family: one base class, errno turned into an actionable hint."""

from __future__ import annotations

import errno as errno_mod
import os

_HINTS = {
    errno_mod.EPERM: "run as root (CAP_BPF + CAP_NET_ADMIN) and check the memlock limit",
    errno_mod.EACCES: "the verifier refused the program; see the verifier log",
    errno_mod.ENOENT: "no such pin or object: is bpffs mounted and the agent's pin directory present?",
    errno_mod.E2BIG: "a map or value is larger than the kernel accepts",
    errno_mod.ENOSPC: "the map is full: raise its max entries",
    errno_mod.EEXIST: "already exists",
    errno_mod.EINVAL: "invalid argument: a struct layout or flag does not match what the kernel expects",
}


class BpfError(Exception):
    """Any failure of a bpf operation. `errno` is the kernel's error number (0 when not from the kernel)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        self.errno = errno
        hint = _HINTS.get(errno)
        detail = f" ({os.strerror(errno)})" if errno else ""
        super().__init__(f"{message}{detail}" + (f": {hint}" if hint else ""))


class VerifierError(BpfError):
    """The kernel's verifier rejected a program. `summary` is the telling line, `log` the whole log."""

    def __init__(self, message: str, errno: int, log: str) -> None:
        self.log = log
        lines = [line for line in log.splitlines() if line.strip()]
        # The last lines before "processed N insns" say why; keep the most specific one.
        candidates = [line for line in lines if "processed" not in line and "verification time" not in line]
        self.summary = candidates[-1] if candidates else "(no verifier log)"
        super().__init__(f"{message}: {self.summary}", errno)


class MapKeyNotFound(BpfError):
    """A lookup or delete named a key the map does not hold."""
