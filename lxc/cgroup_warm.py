"""Warm the kernel's cgroup migration lock before a container starts or stops.

Every cgroup migration (a process written into a cgroup.procs file) takes the
kernel's global cgroup_threadgroup_rwsem for writing. After a quiet spell, the
first writer waits a full RCU grace period for that (the percpu rwsem's
rcu_sync), and for a while after it later writers do not. `lxc-start` migrates
its monitor and the container into their cgroups, so on a node where no
container started or stopped in the last ~0.1 s, `lxc-start -d` of a busybox
CT took 22-28 ms here, against 9-13 ms right after another container operation
(tests/bench/bench_lxc.py, 2.).

So a start first asks for a migration that changes nothing (this process into
the cgroup it is already in), on a thread of its own: part of the grace period
(15-17 ms when cold, traced in corrald) then elapses while the start is
recorded and prepared, before lxc-start begins (1.5-3.5 ms later) and reaches
its first migration (~3 ms in). Measured: a bare `lxc-start -d` after 1 s idle,
23-26 ms, warmed 4 ms ahead 11.6 ms; corrald's cold start gains about 5 ms.
`lxc-stop -k` likewise (its monitor moves its cgroups as the container ends):
20.7 ms bare after 0.6 s running, 12.4 ms warmed 3 ms ahead. On another
machine of this kind (one grace period ~8 ms): `lxc-start -d` 7.8 ms right
after a stop, 15.8 ms after a 20-100 ms pause, 24 ms after 0.5 s; with the
no-op migration made first (it then waited 2.4, 6.7 and 7.9 ms), 7.8 ms each.
Best effort: where the write is refused (a read-only cgroup file system in a
container), warming is switched off and starts go as before. The kernel's
`favordynmods` cgroup mount option removes the wait for every writer, at some
cost to every fork and exit.
"""

from __future__ import annotations

import logging
import os
import threading

from corral.lxc import cgroups

log = logging.getLogger(__name__)


class CgroupWarmer:
    """One daemon thread that makes the no-op migration when asked (`warm`).

    The thread's work between waking and the write is two system calls: it runs
    as the start's own thread prepares, and each call gives up the GIL and must
    win it back, so a path resolved anew each time (a dozen calls) came late."""

    def __init__(self) -> None:
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.disabled = False
        self.warmed = 0  # migrations made (tests)
        self._self_cgroup = -1  # /proc/self/cgroup, kept open: one pread tells a move
        self._known = b""  # its text when the procs file below was resolved
        self._procs = -1  # that cgroup's cgroup.procs, kept open
        self._pid = str(os.getpid()).encode()

    def warm(self) -> None:
        """Ask for a warming migration now; returns at once."""
        if self.disabled:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cgroup-warm", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        while not self.disabled:
            self._wanted.wait()
            self._wanted.clear()  # starts asking meanwhile are served by this one
            try:
                self._migrate()
                self.warmed += 1
            except OSError as err:
                self.disabled = True
                log.info("cgroup warming before container starts is off: %s", err)

    def _migrate(self) -> None:
        if self._self_cgroup < 0:
            self._self_cgroup = os.open("/proc/self/cgroup", os.O_RDONLY)
        text = os.pread(self._self_cgroup, 65536, 0)
        if text != self._known or self._procs < 0:
            # First use, or this process was moved: resolve the file anew (writing to
            # the old one would move it back).
            if self._procs >= 0:
                os.close(self._procs)
                self._procs = -1
            self._procs = os.open(own_procs_file(), os.O_WRONLY)
            self._known = text
        os.write(self._procs, self._pid)


def own_procs_file() -> str:
    """The cgroup.procs file of the cgroup this process is in: the unified (v2)
    one when reachable, else that of a v1 hierarchy."""
    where = cgroups.paths(os.getpid())
    for key in ("", "pids", "cpu", "memory", *sorted(where)):
        if key in where:
            return os.path.join(where[key], "cgroup.procs")
    raise FileNotFoundError("no cgroup of this process is reachable")


WARMER = CgroupWarmer()
