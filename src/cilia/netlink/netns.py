"""Network namespace cookies: the 64-bit id the kernel gives a netns (bpf_get_netns_cookie() in the
socket hooks), read with SO_NETNS_COOKIE from a socket made inside that namespace."""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71
_libc = ctypes.CDLL(None, use_errno=True)


def netns_cookie(path: str) -> int | None:
    """The cookie of the network namespace at `path` (/run/netns/X, /proc/PID/ns/net); None if unreadable.

    setns() moves only the calling thread, so the work happens in a short-lived thread of its own and
    the agent's other threads never change namespace."""
    result: list[int] = []

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                return
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                    result.append(int.from_bytes(probe.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little"))
            finally:
                _libc.setns(own, CLONE_NEWNET)
        finally:
            os.close(target)
            os.close(own)

    thread = threading.Thread(target=work, name="netns-cookie")
    thread.start()
    thread.join(timeout=5)
    return result[0] if result else None
