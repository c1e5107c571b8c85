"""The lab's cleanup of a killed node's VM cgroups (corral.cluster.lab.remove_vm_groups).

A lab node's power loss kills its embedded libvirt with its VMs, and nothing then
removes the VMs' cgroups (a real host reboots). These tests pin libvirt's naming
and remove real groups in this host's cgroup hierarchy.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import lab as labmod

# Found on this host after a lab HA run, the groups of VM 90310 that node1's and
# node2's embedded libvirt (root DATA_DIR/libvirt) had made.
MADE_BY_LIBVIRT = {
    "/tmp/pytest-of-root/pytest-0/halab0/lab/node1/libvirt": (
        "qemu-embed-9e410014-1-corral-90310.libvirt-qemu"
    ),
    "/tmp/pytest-of-root/pytest-0/halab0/lab/node2/libvirt": (
        "qemu-embed-416a2854-1-corral-90310.libvirt-qemu"
    ),
}

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 23 0:38 / /sys/fs/cgroup/memory rw,relatime shared:5 - cgroup cgroup rw,memory
50 23 0:40 / /proc rw,nosuid - proc proc rw
"""


def test_the_prefix_is_the_one_libvirt_gives_an_embed_roots_vms() -> None:
    for root, group in MADE_BY_LIBVIRT.items():
        assert group.startswith(labmod.embed_group_prefix(root))
    prefixes = {labmod.embed_group_prefix(root) for root in MADE_BY_LIBVIRT}
    assert len(prefixes) == 2


def testcgroup_mount_points_are_read_from_mountinfo() -> None:
    assert labmod.cgroup_mount_points(MOUNTINFO) == [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/memory",
    ]


def _writable_hierarchy() -> Path | None:
    for point in labmod.cgroup_mount_points(Path("/proc/self/mountinfo").read_text()):
        if os.access(point, os.W_OK) and Path(point, "cgroup.procs").exists():
            return Path(point)
    return None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[labmod.LabNode]:
    if os.geteuid() != 0 or _writable_hierarchy() is None:
        pytest.skip("needs root and a writable cgroup hierarchy")
    data_dir = tmp_path / f"node-{uuid.uuid4().hex[:8]}"  # its own groups' names
    yield labmod.LabNode(
        name="node1", index=1, address="10.0.0.1", netns="x", veth="y", data_dir=str(data_dir)
    )


def test_a_killed_nodes_empty_vm_groups_go_and_busy_ones_stay(node: labmod.LabNode) -> None:
    point = _writable_hierarchy()
    assert point is not None
    prefix = labmod.embed_group_prefix(str(Path(node.data_dir, "libvirt")))
    machine = point / "machine"
    made_machine = not machine.exists()
    dead = machine / f"{prefix}1-corral-7.libvirt-qemu"
    busy = machine / f"{prefix}2-corral-8.libvirt-qemu"
    other = machine / "qemu-embed-00000000-3-corral-9.libvirt-qemu"  # another node's
    for group in (dead / "emulator", busy, other):
        group.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        removed = labmod.remove_vm_groups(node)
        assert sorted(removed) == [str(dead), str(dead / "emulator")]
        assert not dead.exists() and busy.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        for group in (dead / "emulator", dead, busy, other):
            if group.exists():
                group.rmdir()
        if made_machine:
            machine.rmdir()


# /proc/PID/cgroup of a lab CT's init and of its lxc monitor, read on this host.
INIT_CGROUP = """\
13:pids:/lxc.payload.90300
12:blkio:/lxc.payload.90300
5:memory:/lxc.payload.90300
1:cpu:/lxc.payload.90300
0::/lxc.payload.90300/init.scope
"""
MONITOR_CGROUP = """\
5:memory:/lxc.monitor.90300
0::/lxc.monitor.90300
"""
CORRALD_CGROUP = """\
5:memory:/
0::/
"""


def test_the_groups_of_a_killed_nodes_containers_are_named_from_proc() -> None:
    assert labmod.lxc_group_names(INIT_CGROUP) == {"lxc.payload.90300"}
    assert labmod.lxc_group_names(MONITOR_CGROUP) == {"lxc.monitor.90300"}
    assert labmod.lxc_group_names(CORRALD_CGROUP) == set()


def test_a_killed_containers_groups_go_from_every_hierarchy(node: labmod.LabNode) -> None:
    name = f"lxc.payload.crltest{uuid.uuid4().hex[:6]}"
    points = [
        Path(p)
        for p in labmod.cgroup_mount_points(Path("/proc/self/mountinfo").read_text())
        if os.access(p, os.W_OK)
    ]
    made = []
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        for point in points:
            (point / name / "init.scope").mkdir(parents=True)
            made.append(point / name)
        (made[0] / "init.scope" / "cgroup.procs").write_text(str(sleeper.pid))
        assert labmod.container_groups([sleeper.pid]) >= {name}
        # While its process lives, its group stays; the empty ones go.
        removed = labmod.remove_container_groups({name}, timeout=0.1)
        assert made[0].exists() and not any(g.exists() for g in made[1:])
        assert {str(g) for g in made[1:]} <= set(removed)
        sleeper.kill()
        sleeper.wait()
        assert labmod.remove_container_groups({name}) == [
            str(made[0] / "init.scope"),
            str(made[0]),
        ]
    finally:
        sleeper.kill()
        sleeper.wait()
        for group in made:
            if group.exists():
                (group / "init.scope").rmdir()
                group.rmdir()
