"""bpffs: make sure it is mounted, and remove a directory of pins."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cilia.bpf.errors import BpfError


def bpffs_mounted(mount_point: str = "/sys/fs/bpf") -> bool:
    with open("/proc/mounts", encoding="ascii") as mounts:
        return any(
            fields[1] == mount_point and fields[2] == "bpf"
            for fields in (line.split() for line in mounts)
            if len(fields) >= 3
        )


def ensure_bpffs(mount_point: str = "/sys/fs/bpf") -> None:
    """Mount bpffs where Cilium and systemd put it, if nothing is mounted there yet."""
    if bpffs_mounted(mount_point):
        return
    os.makedirs(mount_point, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "bpf", "bpffs", mount_point], capture_output=True, text=True, check=False
    )
    if result.returncode != 0 and not bpffs_mounted(mount_point):
        raise BpfError(f"mounting bpffs at {mount_point}: {result.stderr.strip()}")


def remove_pins(directory: str | os.PathLike[str]) -> None:
    """Unlink every pin below `directory`, then the directories themselves (bpffs has no rm -r)."""
    root = Path(directory)
    if not root.exists():
        return
    for current, dirs, files in os.walk(root, topdown=False):
        for name in files:
            (Path(current) / name).unlink(missing_ok=True)
        for name in dirs:
            (Path(current) / name).rmdir()
    root.rmdir()
