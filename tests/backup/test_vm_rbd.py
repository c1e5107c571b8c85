"""A VM backed up from dir storage restores onto Ceph RBD (dir -> btrfs -> rbd in
the issue's chain) and boots from it through librbd showing its disk marker;
on rbd the storage snapshots the running VM's image itself."""

from __future__ import annotations

import pytest
from proxmoxer import ProxmoxAPI

from tests.backup.conftest import NODE, new_vmid, task_ok
from tests.backup.test_vm import Vm, make_vm
from tests.util import Corrald

pytestmark = pytest.mark.timeout(600)


def test_vm_restored_onto_rbd_boots_and_snapshots(
    node: Corrald, prox: ProxmoxAPI, rbd: str, guest_files: dict[str, str], vms: list[int]
) -> None:
    vm = make_vm(node, prox, guest_files, vms, "local:0.02")
    vm.start()
    vm.write("MARK-rbd")
    n = prox.nodes(NODE)
    task_ok(prox, n.vzdump.post(vmid=vm.vmid, storage="local", mode="stop", compress="gzip"))
    (row,) = n.storage("local").content.get(content="backup", vmid=vm.vmid)
    newid = new_vmid()
    vms.append(newid)
    task_ok(prox, n.qemu.create(vmid=newid, archive=row["volid"], storage=rbd, unique=1))
    copy = Vm(node, prox, newid)
    assert copy.api.config.get()["virtio0"].startswith(f"{rbd}:vm-{newid}-disk-"), "on rbd"
    copy.start()
    assert copy.read() == "MARK-rbd"
    task_ok(prox, copy.api.snapshot.post(snapname="onrbd"))  # live: rbd snapshots it
    copy.write("MARK-changed")
    task_ok(prox, copy.api.snapshot("onrbd").rollback.post(start=1))
    copy.wait_boot()
    assert copy.read() == "MARK-rbd"
    task_ok(prox, copy.api.snapshot("onrbd").delete())
    task_ok(prox, n.storage("local").content(row["volid"]).delete())
