"""VM snapshots, backup and restore through proxmoxer against a real corrald and
TCG guests (the tiny busybox guest). The guest writes markers onto its virtio
disk through its serial console:

- a running VM on a qcow2 disk (dir storage) is snapshotted (QEMU takes the
  internal snapshot of its open file), the marker changes, a rollback with
  start=1 brings the old marker back after a boot;
- with vmstate=1 the RAM is saved too: the rollback resumes the guest where it
  was, without a boot;
- a snapshot-mode vzdump of the running VM (libvirt's backup job) restores to
  a new VMID on btrfs, boots, and shows the marker.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from proxmoxer import ProxmoxAPI

from corral.cluster import keys
from corral.cluster.store import Store
from tests.assets import guest
from tests.backup.conftest import NODE, new_vmid, task_ok
from tests.kvm.serial import Serial
from tests.util import Corrald

pytestmark = pytest.mark.timeout(600)


class Vm:
    def __init__(self, node: Corrald, prox: ProxmoxAPI, vmid: int) -> None:
        self.vmid, self.prox = vmid, prox
        self.api = prox.nodes(NODE).qemu(vmid)
        run = node.data_dir / "qemu"
        self.serial = Serial(str(run / f"{vmid}.serial0"), str(run / f"{vmid}.serial0.log"))

    def pid(self) -> int:
        return int(self.api.status.current.get().get("pid") or 0)

    def start(self) -> None:
        task_ok(self.prox, self.api.status.start.post())
        self.wait_boot()

    def wait_boot(self) -> None:
        """A fresh QEMU starts a fresh console log: wait for its boot to finish."""
        self.serial.wait_count(guest.MARKER_READY, 1, 240)
        self.serial.connect()

    def write(self, text: str) -> None:
        self.serial.run(f"echo {text} | dd of=/dev/vda bs=512 count=1 conv=sync 2>/dev/null; sync")

    def read(self) -> str:
        return self.serial.run("dd if=/dev/vda bs=512 count=1 2>/dev/null | head -n1").strip()


def make_vm(node: Corrald, prox: ProxmoxAPI, guest_files: dict[str, str], made: list[int],
            disk: str) -> Vm:  # fmt: skip
    vmid = new_vmid()
    made.append(vmid)
    task_ok(prox, prox.nodes(NODE).qemu.create(
        vmid=vmid, name=f"vm{vmid}", memory=128, kvm=0, serial0="socket", tablet=0,
        virtio0=disk, kernel="local:snippets/vmlinuz", initrd="local:snippets/initrd.img",
        cmdline=guest_files["cmdline"], agent=0,
    ))  # fmt: skip
    return Vm(node, prox, vmid)


def test_vm_snapshots_running_qcow2(
    node: Corrald, prox: ProxmoxAPI, guest_files: dict[str, str], vms: list[int]
) -> None:
    vm = make_vm(node, prox, guest_files, vms, "local:0.02,format=qcow2")
    vm.start()
    vm.write("MARK-one")
    assert vm.read() == "MARK-one"
    upid = vm.api.snapshot.post(snapname="s1")
    task_ok(prox, upid)
    log = [r["t"] for r in prox.nodes(NODE).tasks(upid).log.get()]
    assert any("by QEMU" in t for t in log), log  # the running QEMU took it
    vm.write("MARK-two")
    before = vm.pid()
    task_ok(prox, vm.api.snapshot("s1").rollback.post(start=1))
    assert vm.pid() != before  # stopped, rolled back, started: a new boot
    vm.wait_boot()
    assert vm.read() == "MARK-one"

    # With the RAM: the guest resumes where it was (no boot), disk as it was.
    vm.serial.run("echo in-ram > /ram")
    upid = vm.api.snapshot.post(snapname="s2", vmstate=1)
    task_ok(prox, upid)
    assert vm.api.status.current.get()["status"] == "running"
    vm.serial.connect()  # saving the RAM restarts the QEMU process (documented)
    vm.write("MARK-three")
    vm.serial.run("rm /ram")
    upid = vm.api.snapshot("s2").rollback.post()
    task_ok(prox, upid)
    assert vm.api.status.current.get()["status"] == "running"
    vm.serial.connect()
    assert vm.serial.run("cat /ram") == "in-ram"  # RAM came back: no boot
    assert vm.read() == "MARK-one"
    tree = {r["name"]: r for r in vm.api.snapshot.get()}
    assert tree["s2"]["vmstate"] == 1 and tree["s2"]["parent"] == "s1"
    task_ok(prox, vm.api.snapshot("s1").delete())  # running: QEMU deletes it
    task_ok(prox, vm.api.snapshot("s2").delete())
    assert [r["name"] for r in vm.api.snapshot.get()] == ["current"]
    # Destroying the VM takes its snapshots' saved RAM along.
    task_ok(prox, vm.api.snapshot.post(snapname="s3", vmstate=1))
    state = node.data_dir / "vmstate" / str(vm.vmid)
    assert (state / "s3.state").exists()
    task_ok(prox, vm.api.status.stop.post())
    task_ok(prox, vm.api.delete())
    assert not state.exists()


def test_vm_backup_while_running_restores_on_btrfs(
    node: Corrald, prox: ProxmoxAPI, store: Store, btrfs: str, guest_files: dict[str, str],
    vms: list[int],
) -> None:  # fmt: skip
    vm = make_vm(node, prox, guest_files, vms, "local:0.02,format=qcow2")
    vm.start()
    vm.write("MARK-backup")
    n = prox.nodes(NODE)
    upid = n.vzdump.post(vmid=vm.vmid, storage="local", mode="snapshot", compress="zstd")
    task_ok(prox, upid)
    log = [r["t"] for r in n.tasks(upid).log.get(limit=500)]
    assert any("backup job completed" in t for t in log), log
    vm.write("MARK-later")  # the guest ran on during and after the backup
    (row,) = n.storage("local").content.get(content="backup", vmid=vm.vmid)
    assert row["volid"].startswith(f"local:backup/vzdump-qemu-{vm.vmid}-")
    assert row["volid"].endswith(".tar.zst")
    newid = new_vmid()
    vms.append(newid)
    task_ok(prox, n.qemu.create(vmid=newid, archive=row["volid"], storage=btrfs, unique=1))
    restored = Vm(node, prox, newid)
    cfg = restored.api.config.get()
    assert cfg["virtio0"].startswith(f"{btrfs}:"), cfg
    assert cfg["name"] == f"vm{vm.vmid}" and int(cfg["memory"]) == 128
    restored.start()
    assert restored.read() == "MARK-backup"
    task_ok(prox, n.storage("local").content(row["volid"]).delete())
    assert store.get_value(keys.volume_attrs(row["volid"])) is None


def test_vm_backup_while_the_guest_writes_is_fsck_clean(
    node: Corrald, prox: ProxmoxAPI, guest_files: dict[str, str], vms: list[int]
) -> None:
    """An ext4 filesystem on the running VM's disk, written to in a loop during a
    snapshot-mode backup: the archived image is consistent (after replaying its
    journal, as after a crash, e2fsck repairs nothing in passes 1-5 beyond the
    superblock's free counts, and a second check is clean)."""
    initrd = node.data_dir / "local" / "snippets" / "initrd-ext4c.img"
    if not initrd.exists():
        initrd.write_bytes(guest.build_initrd(("crc32c_generic", "ext4")))  # checksums: crc32c
    vmid = new_vmid()
    vms.append(vmid)
    task_ok(prox, prox.nodes(NODE).qemu.create(
        vmid=vmid, name=f"vm{vmid}", memory=160, kvm=0, serial0="socket", tablet=0,
        virtio0="local:0.0625", kernel="local:snippets/vmlinuz",
        initrd="local:snippets/initrd-ext4c.img", cmdline=guest_files["cmdline"],
    ))  # fmt: skip
    disk = node.data_dir / "local" / "images" / str(vmid) / f"vm-{vmid}-disk-0.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True, timeout=60)
    vm = Vm(node, prox, vmid)
    vm.start()
    assert "mounted" in vm.serial.run("mount -t ext4 -o commit=1 /dev/vda /mnt && echo mounted")
    vm.serial.send(
        "( i=0; while true; do dd if=/dev/urandom of=/mnt/f$((i%40)) bs=4k count=32 "
        "2>/dev/null; echo $i > /mnt/counter; i=$((i+1)); done ) &"
    )
    time.sleep(3)
    before = int(vm.serial.run("cat /mnt/counter") or 0)
    n = prox.nodes(NODE)
    upid = n.vzdump.post(vmid=vmid, storage="local", mode="snapshot", compress="zstd")
    task_ok(prox, upid)
    assert vm.api.status.current.get()["status"] == "running"
    after = int(vm.serial.run("cat /mnt/counter") or 0)
    assert after > before > 0, (before, after)  # the guest wrote all along
    (row,) = n.storage("local").content.get(content="backup", vmid=vmid)
    dump = node.data_dir / "local" / "dump" / row["volid"].split("/", 1)[1]
    image = node.data_dir / f"fsck-{vmid}.raw"
    try:
        with open(image, "wb") as out:
            unz = subprocess.Popen(["zstd", "-q", "-dc", str(dump)], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-xOf", "-", "disk-drive-virtio0.raw"], stdin=unz.stdout,
                           stdout=out, check=True, timeout=120)  # fmt: skip
            assert unz.wait(60) == 0
        first = subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True, text=True,
                               timeout=120)  # fmt: skip
        assert first.returncode in (0, 1), first.stdout + first.stderr
        # Replaying the journal is what a crash needs; besides it, only the superblock's
        # free counts (which a mounted ext4 never writes back) may be refreshed.
        lines = first.stdout.splitlines()
        fixed = [lines[i - 1] for i, line in enumerate(lines) if line.startswith("Fix? yes")]
        assert all(re.fullmatch(r"Free (blocks|inodes) count wrong \(\d+, counted=\d+\)\.", f)
                   for f in fixed), first.stdout  # fmt: skip
        second = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        assert second.returncode == 0, second.stdout + second.stderr
        listing = subprocess.run(["debugfs", "-R", "ls -l /", str(image)], capture_output=True,
                                 text=True, timeout=60).stdout  # fmt: skip
        assert "counter" in listing and re.search(r"\sf1\s", listing), listing  # data came along
    finally:
        image.unlink(missing_ok=True)
        n.storage("local").content(row["volid"]).delete()
