"""cgroup v2 attachment of socket programs (BPF_PROG_ATTACH, exclusive mode).

Exclusive mode means one program per hook per cgroup: attaching again replaces the old program
atomically, which is what a restarted agent does. The attachment lives with the cgroup, not with
our fd, so the socket hooks keep working while no agent runs. Only ever attach to cgroups the
project created (a node's subtree), never the root cgroup.
"""

from __future__ import annotations

import ctypes
import errno
import os
from enum import IntEnum
from pathlib import Path

from cilia.bpf import libbpf as lb
from cilia.bpf.errors import BpfError
from cilia.bpf.objects import BpfProgram


class CgroupHook(IntEnum):
    """enum bpf_attach_type values of the socket-address hooks (uapi linux/bpf.h)."""

    INET4_CONNECT = 10
    INET6_CONNECT = 11
    UDP4_SENDMSG = 14
    UDP6_SENDMSG = 15
    UDP4_RECVMSG = 19
    UDP6_RECVMSG = 20
    INET4_GETPEERNAME = 29
    INET6_GETPEERNAME = 30


def _open_cgroup(path: Path) -> int:
    if path.resolve() == Path("/sys/fs/cgroup").resolve() or path.parent == path or "cilia" not in path.parts:
        raise BpfError(f"refusing to attach to cgroup {path}: only cgroups under a cilia subtree are used")
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise BpfError(f"opening cgroup {path}", exc.errno or errno.ENOENT) from exc


def cgroup_attach(path: Path, hook: CgroupHook, prog: BpfProgram) -> None:
    """Attach (or atomically replace) the program of `hook` on the cgroup at `path`."""
    fd = _open_cgroup(path)
    try:
        lb.check(lb.lib.bpf_prog_attach(prog.fd, fd, int(hook), 0), f"attaching {prog.name} to {path} ({hook.name})")
    finally:
        os.close(fd)


def cgroup_query(path: Path, hook: CgroupHook) -> list[int]:
    """Ids of the programs attached to `hook` directly on this cgroup."""
    fd = _open_cgroup(path)
    try:
        ids = (ctypes.c_uint32 * 8)()
        count = ctypes.c_uint32(8)
        flags = ctypes.c_uint32(0)
        lb.check(lb.lib.bpf_prog_query(fd, int(hook), 0, ctypes.byref(flags), ids, ctypes.byref(count)),
                 f"querying {hook.name} on {path}")
        return [int(ids[i]) for i in range(count.value)]
    finally:
        os.close(fd)


def cgroup_detach(path: Path, hook: CgroupHook) -> None:
    """Detach whatever is attached to `hook` on the cgroup; nothing attached is fine."""
    fd = _open_cgroup(path)
    try:
        result = lb.lib.bpf_prog_detach2(0, fd, int(hook))
        if result < 0 and -result not in (errno.ENOENT, errno.EINVAL):
            raise BpfError(f"detaching {hook.name} from {path}", -result)
    finally:
        os.close(fd)
