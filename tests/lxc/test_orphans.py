"""orphans.start_ticks: a process's identity for the orphan records, and None once
it has exited, also while it is an unreaped zombie (a container's init killed
with its monitor stays one under a PID 1 that does not reap)."""

from __future__ import annotations

import os
import subprocess
import time

from corral.lxc import orphans


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def test_running_process_has_stable_ticks() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        first = orphans.start_ticks(proc.pid)
        assert first is not None and first > 0
        assert orphans.start_ticks(proc.pid) == first
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert orphans.start_ticks(proc.pid) is None  # reaped: gone


def test_zombie_is_not_running(tmp_path) -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        orphans.record(str(tmp_path), proc.pid)
        assert orphans.orphan_pid(str(tmp_path)) == proc.pid
        os.kill(proc.pid, 9)
        deadline = time.monotonic() + 10
        while _state(proc.pid) != "Z":  # exited, not reaped by us (its parent) yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert orphans.start_ticks(proc.pid) is None
        assert orphans.orphan_pid(str(tmp_path)) is None
        assert not (tmp_path / orphans.INIT_FILE).exists()  # forgotten
    finally:
        proc.kill()
        proc.wait(timeout=10)
