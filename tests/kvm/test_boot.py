"""Real VMs under TCG (`kvm: 0`) in a `qemu:///embed` root: Debian's kernel and a
busybox initramfs booted directly, talked to over the serial socket.

A boot takes ~15 s of emulation here, so one VM is shared by the module and
taken through its whole life in order: boot and answer, cloud-init seed,
status, live NIC/balloon/disk changes, VNC, pause, reset, a fresh driver,
ACPI shutdown, forced shutdown, destroy. Each step checks the guest itself,
not only what libvirt says.
"""

from __future__ import annotations

import re
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from corral.cluster.errors import CommandFailed, Conflict, ParamError
from corral.kvm import cloudinit
from corral.kvm import config as cfg
from corral.kvm.driver import KVM_MISSING, QemuDriver
from corral.storage.volumes import Volumes
from tests.assets import guest
from tests.kvm.conftest import PREFIX, STORAGE, images, new_vmid
from tests.kvm.serial import Serial, wait_ready
from tests.util import wait_for

pytestmark = pytest.mark.timeout(300)
TIMES: dict[str, float] = {}


def nolog(_line: str) -> None:
    pass


class VM:
    def __init__(self, driver: QemuDriver, volumes: Volumes, vmid: int, config: dict) -> None:
        self.driver, self.volumes, self.vmid, self.config = driver, volumes, vmid, config
        self.serial = Serial(*driver.serial_paths(vmid))

    def start(self) -> None:
        self.driver.start(self.vmid, self.config, volumes=self.volumes, log=nolog)
        self.serial.connect()

    def status(self) -> dict[str, Any]:
        return self.driver.status(self.vmid, self.config)

    def dom(self) -> libvirt.virDomain:
        dom = self.driver._domain(self.vmid)
        assert dom is not None
        return dom

    def live(self, **changes: Any) -> set[str]:
        new = {**self.config, **changes}
        applied = self.driver.apply_live(self.vmid, self.config, new, volumes=self.volumes,
                                         log=nolog)  # fmt: skip
        self.config = {**self.config, **{k: v for k, v in changes.items() if k in applied}}
        return applied


@pytest.fixture(scope="module")
def vm(
    driver: QemuDriver,
    volumes: Volumes,
    boot_keys: dict[str, str],
    bridge: str,
    node_dir: str,
) -> Iterator[VM]:
    vmid = new_vmid()
    config = {
        "name": "crlkvm-boot",
        "memory": 192,
        "kvm": 0,
        "serial0": "socket",
        "tablet": 0,
        "virtio0": f"{STORAGE}:0.01",
        "net0": f"virtio,bridge={bridge}",
        "ciuser": "crl",
        "ipconfig0": "ip=10.250.91.2/24",
        **boot_keys,
        "cmdline": boot_keys["cmdline"] + " crlcidata=1",
    }
    started = time.monotonic()
    config = driver.create(vmid, config, volumes=volumes, log=nolog, params={})
    machine = VM(driver, volumes, vmid, config)
    try:
        machine.start()
        TIMES["start"] = time.monotonic() - started
        wait_ready(machine.serial, guest.MARKER_READY)
        TIMES["boot"] = time.monotonic() - started
        yield machine
    finally:
        machine.serial.close()
        try:
            driver.stop(vmid, machine.config, log=nolog)
            driver.destroy(vmid, machine.config, volumes=volumes, log=nolog)
        finally:
            print(f"\nTCG boot figures (s): {', '.join(f'{k}={v:.1f}' for k, v in TIMES.items())}")


def test_boots_and_answers_on_the_serial_console(vm: VM) -> None:
    assert vm.serial.count(guest.MARKER_UP) == 1
    assert vm.serial.run("echo $((6*7))") == "42"
    assert "crlcidata=1" in vm.serial.run("cat /proc/cmdline")
    assert vm.serial.run("ls /sys/block").split() == ["sr0", "vda"]


def test_cloud_init_seed_reaches_the_guest(vm: VM) -> None:
    text = vm.serial.text()
    seen = text[text.index(guest.CIDATA_BEGIN) : text.index(guest.CIDATA_END)]
    assert "local-hostname: crlkvm-boot" in seen and "instance-id: " in seen
    iso = Path(vm.driver.run_dir) / f"{vm.vmid}.cloudinit.iso"
    files = cloudinit.read_iso(iso.read_bytes())
    assert files["volume_id"] == "cidata" and "user: crl" in files["user-data"]
    assert "10.250.91.2" in files["network-config"] and files["meta-data"] in seen + "\n"


def test_status_while_running(vm: VM) -> None:
    st = vm.status()
    assert st["status"] == "running" and st["qmpstatus"] == "running"
    assert st["maxmem"] == 192 << 20 and st["cpus"] == 1 and st["name"] == "crlkvm-boot"
    cmd = Path(f"/proc/{st['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmd[0].endswith(
        b"qemu-system-x86_64"
    ) and f"guest={PREFIX}{vm.vmid}".encode() in b",".join(cmd)
    assert 0 < st["mem"] <= 192 << 20 and st["uptime"] >= 1 and st["diskread"] > 0
    assert st["maxdisk"] == 11 << 20
    assert {"netin", "netout", "diskwrite", "balloon"} <= set(st)
    time.sleep(1)
    assert 0 <= vm.status()["cpu"] <= 1
    assert vm.vmid in vm.driver.running()


def test_status_round_reads_states_at_once_and_figures_when_due(
    vm: VM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's round: every VM's state from one libvirt call, each round; a VM's
    figures (QEMU monitor queries) once every FIGURES_EVERY rounds while it is
    idle, the same entry answered between; a pause is seen within the round."""
    from corral.kvm import figures

    calls: list[str] = []
    real_run = vm.driver.lv.run

    def counting(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(what)
        return real_run(what, fn, *args, **kwargs)

    absent = new_vmid()
    monkeypatch.setattr(vm.driver.lv, "run", counting)
    monkeypatch.setattr(figures, "BUSY_CPU", 2.0)  # a TCG guest's ticks: never "busy"
    items = [(vm.vmid, vm.config), (absent, vm.config)]
    fresh = vm.driver.status_many(items)  # not cached (on demand): measured
    assert calls == ["state of the running VMs", f"status VM {vm.vmid}"]
    one = vm.driver.status(vm.vmid, vm.config)
    got = fresh[vm.vmid]
    assert set(got) == set(one)
    for key in ("status", "qmpstatus", "pid", "maxmem", "maxdisk", "cpus", "name", "balloon"):
        assert got[key] == one[key], key
    assert 0 < got["mem"] <= 192 << 20 and 0 < got["diskread"] <= one["diskread"]
    assert fresh[absent]["status"] == "stopped" and fresh[absent]["vmid"] == absent

    reads = 0
    for _ in range(figures.FIGURES_EVERY):
        calls.clear()
        before = vm.driver._figures._last[vm.vmid][2]
        entry = vm.driver.status_many(items, cached=True)[vm.vmid]
        assert calls[0] == "state of the running VMs" and len(calls) <= 2
        if len(calls) == 2:
            reads += 1
        else:
            assert entry is before  # the last figures, not measured again
    assert reads == 1
    dom = vm.driver._domain(vm.vmid)
    real_run("pause", dom.suspend)
    try:
        entry = vm.driver.status_many(items, cached=True)[vm.vmid]
        assert (entry["status"], entry["qmpstatus"]) == ("running", "paused")
    finally:
        real_run("resume", dom.resume)
    assert vm.driver.status_many(items, cached=True)[vm.vmid]["qmpstatus"] == "running"


def test_nic_in_the_guest_and_link_down_live(vm: VM, bridge: str) -> None:
    mac = cfg.NET.parse(vm.config["net0"])["macaddr"].lower()
    assert vm.serial.run("cat /sys/class/net/eth0/address") == mac
    tap = Path(f"/sys/class/net/tap{vm.vmid}i0")
    assert tap.exists() and (tap / "master").resolve().name == bridge
    vm.serial.run("ip link set eth0 up")
    wait_for(lambda: vm.serial.run("cat /sys/class/net/eth0/carrier") == "1", 20)
    assert vm.live(net0=vm.config["net0"] + ",link_down=1") == {"net0"}
    wait_for(lambda: vm.serial.run("cat /sys/class/net/eth0/carrier") == "0", 20)
    assert vm.live(net0=vm.config["net0"].replace(",link_down=1", "")) == {"net0"}
    wait_for(lambda: vm.serial.run("cat /sys/class/net/eth0/carrier") == "1", 20)
    # A change that needs a new device waits for the next start.
    assert vm.live(net0=vm.config["net0"].replace("virtio=", "e1000=")) == set()


def _guest_mem_kib(vm: VM) -> int:
    return int(vm.serial.run("grep MemTotal /proc/meminfo").split()[1])


def test_balloon_and_memory_live(vm: VM) -> None:
    before = _guest_mem_kib(vm)
    assert vm.live(balloon=128) == {"balloon"}
    wait_for(lambda: _guest_mem_kib(vm) <= before - 48 * 1024, 60, 0.5, "the balloon to inflate")
    assert vm.live(memory=256) == set()  # more than the VM booted with: pending
    assert vm.live(memory=160, balloon=160) == {"memory", "balloon"}
    wait_for(lambda: _guest_mem_kib(vm) >= before - 40 * 1024, 60, 0.5, "the balloon to deflate")
    wait_for(lambda: vm.status()["balloon"] == 160 << 20, 60, 0.5, "the balloon's report")


def test_resize_a_disk_of_the_running_vm(vm: VM) -> None:
    new = vm.driver.resize(vm.vmid, vm.config, "virtio0", 32 << 20, volumes=vm.volumes, log=nolog)
    assert new["virtio0"].endswith(",size=32M")
    vm.config = new
    wait_for(lambda: vm.serial.run("cat /sys/block/vda/size") == str((32 << 20) // 512), 30)
    assert vm.volumes.size(cfg.DISK.parse(new["virtio0"])["file"]) == 32 << 20
    with pytest.raises(ParamError):
        vm.driver.resize(vm.vmid, vm.config, "virtio0", 1 << 20, volumes=vm.volumes, log=nolog)


def test_vnc_console_with_a_fresh_ticket(vm: VM) -> None:
    info = vm.driver.console(vm.vmid, vm.config)
    assert info["host"] == "127.0.0.1" and int(info["port"]) >= 5900 and len(info["ticket"]) == 8
    with socket.create_connection(("127.0.0.1", int(info["port"])), timeout=10) as conn:
        assert conn.recv(12).startswith(b"RFB 003.")
    secure = ET.fromstring(vm.dom().XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
    assert secure.find("./devices/graphics").get("passwd") == info["ticket"]
    assert vm.driver.console(vm.vmid, vm.config)["ticket"] != info["ticket"]


def test_suspend_and_resume(vm: VM) -> None:
    vm.driver.suspend(vm.vmid, vm.config, log=nolog)
    st = vm.status()
    assert st["status"] == "running" and st["qmpstatus"] == "paused"
    vm.serial.send("echo paused-$((40+2))")
    time.sleep(2)
    assert "paused-42" not in vm.serial.text()  # a paused guest runs nothing
    vm.driver.resume(vm.vmid, vm.config, log=nolog)
    wait_for(lambda: "paused-42" in vm.serial.text(), 20)
    assert vm.status()["qmpstatus"] == "running"


def test_reset_reboots_the_guest(vm: VM) -> None:
    started = time.monotonic()
    pid = vm.status()["pid"]
    vm.driver.reset(vm.vmid, vm.config, log=nolog)
    wait_ready(vm.serial, guest.MARKER_READY, n=2)
    TIMES["reset"] = time.monotonic() - started
    assert vm.serial.count(guest.MARKER_UP) == 2
    assert vm.status()["pid"] == pid  # same QEMU, rebooted guest
    assert vm.serial.run("echo $((7*6))") == "42"


def test_a_fresh_driver_finds_the_running_vm(vm: VM, embed_uri: str) -> None:
    fresh = QemuDriver(node="n1", data_dir=vm.driver.data_dir, options=vm.driver.options)
    try:
        assert vm.vmid in fresh.running()
        st = fresh.status(vm.vmid, vm.config)
        assert st["status"] == "running" and st["pid"] == vm.status()["pid"]
    finally:
        fresh.close()
    assert vm.status()["status"] == "running"


def test_a_vm_being_destroyed_holds_up_no_other(vm: VM, boot_keys: dict[str, str]) -> None:
    """libvirt answers no listing of domains while one is being destroyed (its QEMU
    not yet exited: 1-2 s under TCG, ~15 s for one that ignores SIGTERM); the
    driver finds a VM by the handle it kept, so another VM's status, stop or start
    does not wait. Here the destroyed VM's QEMU is stopped (SIGSTOP): libvirt waits
    10 s after its SIGTERM, then kills it."""
    import os
    import signal
    import threading

    driver, stuck = vm.driver, new_vmid()
    config = driver.create(stuck, {"name": "crlkvm-stuck", "memory": 64, "kvm": 0, **boot_keys},
                           volumes=vm.volumes, log=nolog, params={})  # fmt: skip
    driver.start(stuck, config, volumes=vm.volumes, log=nolog)
    try:
        assert vm.status()["status"] == "running"  # its handle is kept from here on
        os.kill(driver.status(stuck, config)["pid"], signal.SIGSTOP)
        stopping = threading.Thread(target=driver.stop, args=(stuck, config), kwargs={"log": nolog})
        stopping.start()
        time.sleep(0.5)  # libvirt is in the destroy, waiting for QEMU to exit
        assert stopping.is_alive()
        assert vm.status()["status"] == "running"
        assert vm.dom().isActive()
        assert stopping.is_alive(), "the other VM's status waited for the destroy"
        stopping.join(60)
        assert driver.status(stuck, config)["status"] == "stopped"
    finally:
        driver.stop(stuck, config, log=nolog)
        driver.destroy(stuck, config, volumes=vm.volumes, log=nolog)


def test_acpi_shutdown(vm: VM) -> None:
    started = time.monotonic()
    vm.driver.shutdown(vm.vmid, vm.config, timeout=60, force_stop=False, log=nolog)
    TIMES["acpi_shutdown"] = time.monotonic() - started
    assert guest.MARKER_POWEROFF in vm.serial.text()
    assert vm.status()["status"] == "stopped" and vm.vmid not in vm.driver.running()
    vm.driver.shutdown(vm.vmid, vm.config, timeout=5, force_stop=False, log=nolog)  # no-op


def test_shutdown_timeout_then_force(vm: VM) -> None:
    vm.start()  # the kernel ignores the power button until /init watches it
    with pytest.raises(CommandFailed) as err:
        vm.driver.shutdown(vm.vmid, vm.config, timeout=2, force_stop=False, log=nolog)
    assert "did not stop within 2 s" in str(err.value)
    assert vm.status()["status"] == "running"
    with pytest.raises(Conflict):
        vm.driver.start(vm.vmid, vm.config, volumes=vm.volumes, log=nolog)
    lines: list[str] = []
    vm.driver.shutdown(vm.vmid, vm.config, timeout=1, force_stop=True, log=lines.append)
    assert vm.status()["status"] == "stopped" and any("stopping it" in x for x in lines)
    vm.driver.stop(vm.vmid, vm.config, log=nolog)  # stopping a stopped VM is fine


def test_destroy_frees_disks_and_run_files(vm: VM, node_dir: str) -> None:
    assert images(node_dir)
    vm.driver.destroy(vm.vmid, vm.config, volumes=vm.volumes, log=nolog)
    assert images(node_dir) == []
    assert vm.driver._domain(vm.vmid) is None
    left = [p for p in Path(vm.driver.run_dir).iterdir() if p.name.startswith(f"{vm.vmid}.")]
    assert left == []


def test_kvm_1_is_refused_on_this_node(
    driver: QemuDriver, volumes: Volumes, boot_keys: dict[str, str]
) -> None:
    vmid = new_vmid()
    config = driver.create(vmid, {"memory": 64, **boot_keys}, volumes=volumes, log=nolog,
                           params={})  # fmt: skip
    with pytest.raises(ParamError) as err:
        driver.start(vmid, config, volumes=volumes, log=nolog)
    assert str(err.value).startswith(KVM_MISSING) and "vmx" in str(err.value)
    assert driver._domain(vmid) is None
    with pytest.raises(ParamError) as err:
        driver.start(vmid, {**config, "kvm": 0, "memory": 1 << 30}, volumes=volumes, log=nolog)
    assert re.search(r"more than node 'n1' has", err.value.errors["memory"])
