"""kill -9 corrald in the middle of a VM create and of a VM start (TCG guests).

With the system libvirtd (a private one, tests/faults/libvirtd.py) QEMU and
libvirt live on while corrald is dead; with `qemu:///embed` libvirt itself dies
with corrald (it runs inside it) and reconnects to QEMU at its restart. Either
way, after the restart: the interrupted task is ended "interrupted by node
restart", a half-made create is removed (its volume freed through the same
recovery as a container's), the VM runs at most once and the API says whether.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from corral.cluster.tasks import INTERRUPTED
from tests.faults.vm_world import VmWorld, vm_world
from tests.faults.world import NODE, kill9, log_text, task_status, wait_log
from tests.util import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(params=["system", "embed"])
def world(request: pytest.FixtureRequest, guest_files: dict[str, str]) -> Iterator[VmWorld]:
    with vm_world(guest_files, embed=request.param == "embed") as w:
        yield w


@pytest.fixture
def vmid() -> int:
    return 7800 + os.getpid() % 50


def test_killed_mid_vm_create(world: VmWorld, vmid: int) -> None:
    s = world.start_node(pause_at="allocated virtio0")
    upid = s.data("POST", f"/nodes/{NODE}/qemu", data=world.config(vmid))
    wait_log(s, upid, "allocated virtio0")
    assert world.volumes(vmid) == [f"vm-{vmid}-disk-0.raw"]  # half-way
    kill9(world.node)

    s = world.start_node()
    st = task_status(s, upid)
    assert (st["status"], st["exitstatus"]) == ("stopped", INTERRUPTED)
    text = log_text(s, upid)
    assert f"freed local:{vmid}/vm-{vmid}-disk-0.raw, allocated by the interrupted create" in text
    assert f"VM {vmid} was not created" in text
    world.assert_gone(s, vmid)
    # The ID is free again.
    s.run_task("POST", f"/nodes/{NODE}/qemu", data=world.config(vmid))
    world.assert_exists_once(s, vmid)
    s.run_task("DELETE", f"/nodes/{NODE}/qemu/{vmid}")
    world.assert_gone(s, vmid)


def test_killed_mid_vm_start(world: VmWorld, vmid: int) -> None:
    s = world.start_node()
    s.run_task("POST", f"/nodes/{NODE}/qemu", data=world.config(vmid))
    upid = s.data("POST", f"/nodes/{NODE}/qemu/{vmid}/status/start")
    wait_for(world.qemus, 60, 0.005, what="QEMU forked")  # the start is under way
    kill9(world.node)

    s = world.start_node()
    st = task_status(s, upid)
    assert (st["status"], st["exitstatus"]) == ("stopped", INTERRUPTED)
    # The system daemon finished the start alone; the embedded one died half-way
    # and killed the QEMU it had not resumed when it came back, or found it running.
    if "embed" not in world.uri:
        world.wait_status(s, vmid, "running")
    status = world.assert_truthful(s, vmid)
    again = s.wait_task(s.data("POST", f"/nodes/{NODE}/qemu/{vmid}/status/start"), timeout=120)
    assert ("already running" in again["exitstatus"]) == (status == "running"), again
    assert world.assert_truthful(s, vmid) == "running"
    world.assert_exists_once(s, vmid)
    s.run_task("POST", f"/nodes/{NODE}/qemu/{vmid}/status/stop")
    assert world.assert_truthful(s, vmid) == "stopped"
    s.run_task("DELETE", f"/nodes/{NODE}/qemu/{vmid}")
    world.assert_gone(s, vmid)
