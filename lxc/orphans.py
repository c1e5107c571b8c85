"""Containers whose lxc monitor died: found, reported running, and stopped.

liblxc answers a container's state through its monitor process ("[lxc
monitor] PATH NAME"). When that process is killed, the container's init
(reparented to PID 1) and everything under it keep running (render.py sets
`lxc.monitor.signal.pdeath = 0`; liblxc's default SIGKILLs them), yet liblxc
says STOPPED: a status would lie, a second start would boot the same root file
system twice, and `lxc-stop` has nobody to ask. So the driver records the init
process at start (`record`), asks `orphan_pid` when liblxc says STOPPED, and
stops such a container by killing its cgroup (`kill`), as Proxmox's
check_running looks past the monitor too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from corral.lxc import cgroups

INIT_FILE = "init.pid"  # in the container's lxc folder: "PID START_TICKS"


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot): a PID reused later differs.
    None once it has exited, also while it is a zombie that nobody reaped yet
    (a container's dead init waits so under a PID 1 that does not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def record(ct_dir: str, pid: int) -> None:
    """Remember the init process of a container that just started."""
    ticks = start_ticks(pid)
    if pid <= 0 or ticks is None:
        return
    tmp = os.path.join(ct_dir, f".{INIT_FILE}.tmp")
    with open(tmp, "w") as fh:
        fh.write(f"{pid} {ticks}\n")
    os.replace(tmp, os.path.join(ct_dir, INIT_FILE))


def orphan_pid(ct_dir: str) -> int | None:
    """The init PID of the container started from `ct_dir` if it still runs
    (call it when liblxc says STOPPED: then its monitor is gone)."""
    try:
        with open(os.path.join(ct_dir, INIT_FILE)) as fh:
            pid, ticks = (int(x) for x in fh.read().split())
    except (OSError, ValueError):
        return None
    if start_ticks(pid) != ticks:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(ct_dir, INIT_FILE))  # it stopped: forget it
        return None
    return pid


def _payload(group: str | None) -> str | None:
    """The container's own group ("lxc.payload.NAME") at or above `group`; never a
    group that is not a container's (killing it would kill other processes)."""
    while group and not os.path.basename(group).startswith("lxc.payload"):
        parent = os.path.dirname(group)
        group = None if parent == group else parent
    return group


def kill(pid: int, timeout: float = 10.0) -> bool:
    """SIGKILL every process of `pid`'s cgroup (the whole container), then wait
    for `pid` to go. True when it is gone."""
    ticks = start_ticks(pid)
    deadline = time.monotonic() + timeout
    groups: set[str] = set()  # the container's group in every hierarchy
    while start_ticks(pid) == ticks and ticks is not None:
        try:
            found = cgroups.paths(pid)
            groups.update(g for g in map(_payload, found.values()) if g)
            group = _payload(found.get("") or found.get("pids") or found.get("freezer"))
        except OSError:
            group = None
        pids = {pid}
        if group:
            if os.path.exists(os.path.join(group, "cgroup.kill")):
                with contextlib.suppress(OSError):
                    with open(os.path.join(group, "cgroup.kill"), "w") as fh:
                        fh.write("1")
            for root, _dirs, files in os.walk(group):  # nested groups of the guest too
                if "cgroup.procs" in files:
                    with contextlib.suppress(OSError), open(f"{root}/cgroup.procs") as fh:
                        pids.update(int(p) for p in fh.read().split())
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    _remove_groups(groups)
    return True


def _remove_groups(groups: set[str], timeout: float = 5.0) -> None:
    """Remove a dead container's cgroups and its dead monitor's ("lxc.monitor.NAME"
    beside them): the monitor removes both when a container stops, so left here they
    would pile up and the next start would get "lxc.payload.NAME-1". rmdir only
    removes an empty group; one whose killed processes are still exiting is retried."""
    deadline = time.monotonic() + timeout
    for group in groups:
        name = os.path.basename(group).removeprefix("lxc.payload.")
        for top in (group, os.path.join(os.path.dirname(group), f"lxc.monitor.{name}")):
            while True:
                busy = False
                for root, _dirs, _files in os.walk(top, topdown=False):
                    try:
                        os.rmdir(root)
                    except FileNotFoundError:
                        pass
                    except OSError:
                        busy = True
                if not busy or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
