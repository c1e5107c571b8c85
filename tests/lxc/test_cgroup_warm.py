"""Warming the kernel's cgroup migration lock before a start (lxc/cgroup_warm.py):
a real migration of this process into its own cgroup that moves nothing, and a
warmer that switches itself off where it is refused. What it saves is measured
by tests/bench/bench_lxc.py, not asserted here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.lxc import cgroup_warm
from tests.util import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writing cgroup.procs needs root")


def test_the_procs_file_is_of_this_process_s_own_cgroup() -> None:
    path = cgroup_warm.own_procs_file()
    assert path.endswith("/cgroup.procs")
    assert str(os.getpid()) in Path(path).read_text().split()


def test_a_warmer_migrates_on_its_thread_when_asked_and_moves_nothing() -> None:
    before = Path("/proc/self/cgroup").read_text()
    warmer = cgroup_warm.CgroupWarmer()
    warmer.warm()
    wait_for(lambda: warmer.warmed == 1, 10, 0.01, what="one warming migration")
    assert Path("/proc/self/cgroup").read_text() == before
    for _ in range(20):  # a burst of starts: served, by one migration or more
        warmer.warm()
    wait_for(lambda: warmer.warmed >= 2 and not warmer._wanted.is_set(), 10, 0.01,
             what="the burst served")  # fmt: skip
    assert not warmer.disabled
    assert Path("/proc/self/cgroup").read_text() == before


def test_a_warmer_resolves_its_file_again_when_this_process_was_moved() -> None:
    warmer = cgroup_warm.CgroupWarmer()
    warmer.warm()
    wait_for(lambda: warmer.warmed == 1, 10, 0.01, what="one warming migration")
    warmer._known = b"9:pids:/elsewhere\n"  # as if moved since: the old file must go
    warmer.warm()
    wait_for(lambda: warmer.warmed == 2, 10, 0.01, what="a second migration")
    assert warmer._known == Path("/proc/self/cgroup").read_bytes()


def test_a_refused_warming_switches_itself_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only cgroup file system (a container): starts go on, unwarmed."""

    def refused() -> str:
        raise PermissionError(13, "Read-only file system", "cgroup.procs")

    monkeypatch.setattr(cgroup_warm, "own_procs_file", refused)
    warmer = cgroup_warm.CgroupWarmer()
    warmer.warm()
    wait_for(lambda: warmer.disabled, 10, 0.01, what="warming switched off")
    assert warmer.warmed == 0
    warmer.warm()  # returns at once, asks nothing
    assert not warmer._wanted.is_set()
