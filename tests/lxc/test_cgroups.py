"""Finding a process's cgroup on every layout (issue 17 item 1): the cgroup paths of
/proc/PID/cgroup are resolved against this process's cgroup mounts, never joined to
/sys/fs/cgroup as they are."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from corral.lxc import cgroups

# This machine's hybrid layout: one v1 hierarchy per controller plus the unified one.
HOST = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# Inside a system container with a cgroup namespace whose /sys/fs/cgroup is the
# host's, bind-mounted: the mounts' roots lie above the namespace root.
NESTED = HOST.replace(" / /sys/fs/cgroup/", " /.. /sys/fs/cgroup/")

# A pure v2 host, and a Debian host with co-mounted cpu,cpuacct.
V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
COMOUNT = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"


def _resolve(mountinfo: str, proc_cgroup: str, pid: int | None = None) -> dict[str, str | None]:
    mounts = cgroups.parse_mountinfo(mountinfo)
    out: dict[str, str | None] = {}
    for hierarchy, path in cgroups.parse_proc_cgroup(proc_cgroup).items():
        out[",".join(sorted(hierarchy))] = cgroups.resolve(mounts, hierarchy, path, pid)
    return out


def test_host_layout() -> None:
    got = _resolve(HOST, "4:memory:/lxc.payload.100\n1:cpu:/lxc.payload.100\n0::/lxc.payload.100\n")
    assert got == {
        "memory": "/sys/fs/cgroup/memory/lxc.payload.100",
        "cpu": "/sys/fs/cgroup/cpu/lxc.payload.100",
        "": "/sys/fs/cgroup/unified/lxc.payload.100",
    }


def test_guest_above_the_namespace_root() -> None:
    """What failed in the fresh Debian container: '/sys/fs/cgroup/memory/../lxc.payload.N'."""
    got = _resolve(NESTED, "4:memory:/../lxc.payload.73374\n9:name=systemd:/../lxc.payload.73374\n")
    assert got == {
        "memory": "/sys/fs/cgroup/memory/lxc.payload.73374",
        "name=systemd": "/sys/fs/cgroup/systemd/lxc.payload.73374",
    }


def test_pure_v2_and_comounted_v1() -> None:
    assert _resolve(V2, "0::/lxc.payload.5\n") == {"": "/sys/fs/cgroup/lxc.payload.5"}
    got = _resolve(COMOUNT, "2:cpu,cpuacct:/lxc.payload.5/ns\n")
    assert got == {"cpu,cpuacct": "/sys/fs/cgroup/cpu,cpuacct/lxc.payload.5/ns"}


def test_namespace_root_hidden_by_the_mount_is_found_by_membership(tmp_path: Path) -> None:
    """Mount root '/..' and a path inside the namespace ('/lxc.payload.7'): the
    namespace's own directory name is unknown; the member list decides."""
    for name, procs in (("other", "1\n"), ("mine", "4242\n")):
        d = tmp_path / name / "lxc.payload.7"
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text(procs)
    info = f"35 31 0:32 /.. {tmp_path} rw - cgroup cgroup rw,memory\n"
    got = _resolve(info, "4:memory:/lxc.payload.7\n", pid=4242)
    assert got == {"memory": str(tmp_path / "mine" / "lxc.payload.7")}


def test_cgroup_outside_every_mount_is_unknown() -> None:
    info = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    assert _resolve(info, "4:memory:/../lxc.payload.1\n") == {"memory": None}


def test_this_process_resolves_to_real_directories() -> None:
    """On the machine the tests run on (a host, or a system container)."""
    found = cgroups.paths(os.getpid())
    assert found, "no cgroup of this process is reachable"
    for directory in found.values():
        assert os.path.isdir(directory), directory
    mem, _ = cgroups.memory(os.getpid())
    assert mem is not None and mem > 0


def test_unknown_figure_is_none_and_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cgroups, "MOUNTINFO", os.devnull)  # no cgroup mount at all
    caplog.set_level(logging.WARNING, logger=cgroups.__name__)
    for _ in range(3):
        assert cgroups.memory(os.getpid()) == (None, None)
        assert cgroups.cpu_usage_ns(os.getpid()) is None
    warnings = [r for r in caplog.records if "unknown" in r.getMessage()]
    per_file = {r.getMessage() for r in warnings}
    assert len(warnings) == len(per_file)  # each (pid, file) once, not per read


def test_layout_from_the_mounts() -> None:
    assert cgroups.layout_of(cgroups.parse_mountinfo(HOST)) == "v1"  # hybrid
    assert cgroups.layout_of(cgroups.parse_mountinfo(NESTED)) == "v1"
    assert cgroups.layout_of(cgroups.parse_mountinfo(V2)) == "v2"
    systemd_only = "40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
    assert cgroups.layout_of(cgroups.parse_mountinfo(systemd_only + V2)) == "v2"
    assert cgroups.layout_of([]) is None


def test_new_processes_resolve_against_a_mount_table_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each start resolves a new init's groups: the mount table is read once, not per
    process (reading it right after a container started waits on the kernel's mount
    lock), and read again when a resolution against it fails (the mounts changed)."""
    import subprocess

    real = Path("/proc/self/mountinfo").read_text()
    table = tmp_path / "mountinfo"
    table.write_text(real)
    monkeypatch.setattr(cgroups, "MOUNTINFO", str(table))
    monkeypatch.setattr(cgroups, "_mounts", None)
    reads: list[int] = []
    parse = cgroups.parse_mountinfo
    monkeypatch.setattr(cgroups, "parse_mountinfo", lambda text: reads.append(1) or parse(text))
    ours = cgroups.paths(os.getpid())
    assert ours
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        for child in children:  # same groups as ours: children inherit them
            assert cgroups.paths(child.pid) == ours
        assert len(reads) == 1
        table.write_text("")
        cgroups._cgroup_mounts(fresh=True)  # now held: a table without cgroup mounts
        table.write_text(real)  # mounted since
        late = subprocess.Popen(["sleep", "30"])
        children.append(late)
        assert cgroups.paths(late.pid) == ours  # failed against the held table: read again
        assert len(reads) == 3
    finally:
        for child in children:
            child.kill()
            child.wait()
