"""tc clsact attach/detach through libbpf's netlink code, in the calling process's network namespace."""

from __future__ import annotations

import ctypes
import errno
from enum import IntEnum

from cilia.bpf import libbpf as lb
from cilia.bpf.errors import BpfError
from cilia.bpf.objects import BpfProgram

BPF_TC_F_REPLACE = 1


class TcDirection(IntEnum):
    INGRESS = 1
    EGRESS = 2


INGRESS = TcDirection.INGRESS
EGRESS = TcDirection.EGRESS


def _hook(ifindex: int, direction: int) -> lb.BpfTcHook:
    return lb.BpfTcHook(sz=ctypes.sizeof(lb.BpfTcHook), ifindex=ifindex, attach_point=int(direction))


def tc_attach(
    ifindex: int, direction: TcDirection, prog: BpfProgram, *, handle: int = 1, priority: int = 1,
    replace: bool = True,
) -> None:
    """Attach `prog`; with replace=True an existing program is swapped atomically (no gap)."""
    hook = _hook(ifindex, direction)
    created = lb.lib.bpf_tc_hook_create(ctypes.byref(hook))
    if created < 0 and -created != errno.EEXIST:
        raise BpfError(f"creating clsact on ifindex {ifindex}", -created)
    opts = lb.BpfTcOpts(sz=ctypes.sizeof(lb.BpfTcOpts), prog_fd=prog.fd, handle=handle, priority=priority)
    opts.flags = BPF_TC_F_REPLACE if replace else 0
    lb.check(
        lb.lib.bpf_tc_attach(ctypes.byref(hook), ctypes.byref(opts)),
        f"attaching {prog.name} to ifindex {ifindex} {direction.name.lower()}",
    )


def tc_query(ifindex: int, direction: TcDirection, *, handle: int = 1, priority: int = 1) -> int | None:
    """The id of the program attached at (handle, priority), or None."""
    hook = _hook(ifindex, direction)
    opts = lb.BpfTcOpts(sz=ctypes.sizeof(lb.BpfTcOpts), handle=handle, priority=priority)
    result = lb.lib.bpf_tc_query(ctypes.byref(hook), ctypes.byref(opts))
    if result < 0:
        if -result in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return None
        raise BpfError(f"querying tc on ifindex {ifindex}", -result)
    return int(opts.prog_id)


def tc_detach(ifindex: int, direction: TcDirection, *, handle: int = 1, priority: int = 1) -> bool:
    hook = _hook(ifindex, direction)
    opts = lb.BpfTcOpts(sz=ctypes.sizeof(lb.BpfTcOpts), handle=handle, priority=priority)
    result = lb.lib.bpf_tc_detach(ctypes.byref(hook), ctypes.byref(opts))
    if result < 0:
        if -result in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return False
        raise BpfError(f"detaching tc program from ifindex {ifindex}", -result)
    return True


def tc_hook_destroy(ifindex: int) -> None:
    """Remove the clsact qdisc (and with it every filter) from a device."""
    hook = _hook(ifindex, TcDirection.INGRESS | TcDirection.EGRESS)
    result = lb.lib.bpf_tc_hook_destroy(ctypes.byref(hook))
    if result < 0 and -result not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
        raise BpfError(f"removing clsact from ifindex {ifindex}", -result)
