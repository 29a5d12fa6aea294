"""Process supervision for the lab: commands run in a namespace, detached processes started in a
namespace (and a cgroup), stopped by pid, never by name; the pid files a crashed lab leaves behind;
the lab's cgroup subtree and the processes in it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from cilia.lab.errors import LabError
from cilia.paths import cgroup2_mount
from cilia.testing.wait import WaitTimeout, wait_for

PYTHON = sys.executable  # the interpreter (and venv) lab processes run under


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def in_netns(netns: str, *args: str) -> list[str]:
    """nsenter --net only: `ip netns exec` would remount /sys and hide /sys/fs/bpf."""
    return ["nsenter", f"--net=/run/netns/{netns}", *args]


def join_cgroup(cgroup: Path | None) -> Callable[[], None] | None:
    """A preexec_fn that moves the child into `cgroup` before it runs the command."""
    if cgroup is None:
        return None
    procs = str(cgroup / "cgroup.procs")

    def join() -> None:
        with open(procs, "w", encoding="ascii") as handle:
            handle.write(str(os.getpid()))

    return join


def spawn(netns: str, args: list[str], log: Path, cgroup: Path | None = None) -> int:
    """A detached process (its own session) in `netns`, output appended to `log`; returns its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            in_netns(netns, *args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=join_cgroup(cgroup),
        )
    return process.pid


def exited(pid: int) -> bool:
    """Whether `pid` is gone: reaped here if it is our child, else probed with signal 0."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished != 0
    except ChildProcessError:  # not our child (started by an earlier `cilia lab` command)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after a bounded wait. By pid only, never by name."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        wait_for(lambda: exited(pid), grace, 0.05, f"pid {pid} still running after SIGTERM")
        return
    except WaitTimeout:
        pass
    kill_pid(pid)


def kill_pid(pid: int) -> None:
    """SIGKILL and reap: for a process that must not get the chance to clean up (a crash test)."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def stop_pid_files(pid_files: Iterable[Path]) -> None:
    """Stop the processes pid files name (agents of a crashed lab); unreadable files are skipped."""
    for pid_file in pid_files:
        with contextlib.suppress(ValueError, OSError):
            stop_pid(int(pid_file.read_text().strip()))


def cgroup_root() -> Path:
    """The lab's cgroup subtree: <cgroup2>/cilia. Socket LB hooks attach to <root>/<node> only."""
    return cgroup2_mount() / "cilia"


def remove_cgroups() -> None:
    """The lab's cgroup subtree, deepest first. Processes still in it are ours (lab servers, probes):
    stopped by the pids the cgroup lists, then the directories removed (cgroups are rmdir'ed, and
    the kernel drops the socket hooks attached to them with them)."""
    try:
        root = cgroup_root()
    except FileNotFoundError:
        return
    if not root.is_dir():
        return
    for cgroup in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            for line in (cgroup / "cgroup.procs").read_text().split():
                stop_pid(int(line), grace=2.0)
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    with contextlib.suppress(OSError):
        root.rmdir()


def listening_ports(netns: str) -> set[int]:
    """Every TCP and UDP port something listens on in `netns`."""
    out = sh(*in_netns(netns, "ss", "-H", "-ltun"), check=False).stdout
    return {int(line.split()[4].rsplit(":", 1)[1]) for line in out.splitlines() if len(line.split()) > 4}


def wait_listening(netns: str, ports: set[int], timeout: float = 15) -> None:
    """Tests and probes start right after `up`: return only once every port is bound."""
    try:
        wait_for(lambda: ports <= listening_ports(netns), timeout, 0.05,
                 f"servers in {netns} did not bind ports {sorted(ports)}")
    except WaitTimeout as exc:
        raise LabError(str(exc)) from exc
