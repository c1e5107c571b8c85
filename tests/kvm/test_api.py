"""VMs end to end: a real corrald (its own etcd, the QEMU driver on its own
`qemu:///embed` root, the `local` dir storage) driven by unmodified proxmoxer.

The daemon runs in its own process, so its embed root is cleaned up with
`virsh` after it stopped (one embed root per process: this test process
already holds the session's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

from corral.cluster import hostinfo
from tests.assets import guest
from tests.kvm.conftest import new_vmid
from tests.nodes import vm_node
from tests.util import Corrald, wait_for

pytestmark = pytest.mark.timeout(300)
NODE = "node1"


@pytest.fixture(scope="module")
def node(guest_files: dict[str, str]) -> Iterator[tuple[Corrald, str]]:
    with vm_node("crlkvm-api", guest_files, node=NODE) as started:
        yield started


def test_proxmoxer_create_start_status_stop_delete(
    node: tuple[Corrald, str], bridge: str, guest_files: dict[str, str]
) -> None:
    daemon, _ = node
    prox = ProxmoxAPI("127.0.0.1", user="admin@pve", password=daemon.password,
                      verify_ssl=daemon.ca, port=daemon.port, timeout=60)  # fmt: skip

    def ok(upid: str, timeout: int = 180) -> None:
        st = Tasks.blocking_status(prox, upid, timeout=timeout, polling_interval=0.1)
        assert st is not None and st["exitstatus"] == "OK", st

    vmid = new_vmid()
    vm = prox.nodes(NODE).qemu(vmid)
    started = time.monotonic()
    ok(
        prox.nodes(NODE).qemu.create(
            vmid=vmid,
            name="crlkvm-api",
            memory=128,
            kvm=0,
            serial0="socket",
            tablet=0,
            virtio0="local:0.01",
            net0=f"virtio,bridge={bridge}",
            kernel="local:snippets/vmlinuz",
            initrd="local:snippets/initrd.img",
            cmdline=guest_files["cmdline"],
        )
    )
    config = vm.config.get()
    assert config["virtio0"] == f"local:{vmid}/vm-{vmid}-disk-0.raw,size=11M"
    assert config["net0"].startswith("virtio=") and f"bridge={bridge}" in config["net0"]
    image = daemon.data_dir / "local" / "images" / str(vmid) / f"vm-{vmid}-disk-0.raw"
    assert image.stat().st_size == 11 << 20

    ok(vm.status.start.post())
    created_and_started = time.monotonic() - started
    st = vm.status.current.get()
    assert st["status"] == "running" and st["qmpstatus"] == "running" and st["name"] == "crlkvm-api"
    assert st["maxmem"] == 128 << 20 and st["pid"] > 0
    assert b"qemu-system" in Path(f"/proc/{st['pid']}/cmdline").read_bytes()
    log = daemon.data_dir / "qemu" / f"{vmid}.serial0.log"
    wait_for(lambda: guest.MARKER_READY in log.read_text(errors="replace"), 180, 0.2, "the boot")
    assert any(r["vmid"] == vmid and r["status"] == "running" for r in prox.nodes(NODE).qemu.get())

    vnc = vm.vncproxy.post()
    assert int(vnc["port"]) >= 5900 and len(vnc["ticket"]) == 8

    # A restart of the daemon leaves the VM running; the new daemon finds it. Not
    # where libvirt cannot find the VM's cgroup again (the kvm probe logs why).
    if hostinfo.cgroups_above_namespace():
        print(f"\nrestart part skipped: {hostinfo.VM_RECONNECT_LIMIT}")
    else:
        daemon.stop()
        assert Path(f"/proc/{st['pid']}").exists()
        daemon.start()
        prox = ProxmoxAPI("127.0.0.1", user="admin@pve", password=daemon.password,
                          verify_ssl=daemon.ca, port=daemon.port, timeout=60)  # fmt: skip
        vm = prox.nodes(NODE).qemu(vmid)
        again = vm.status.current.get()
        assert again["status"] == "running" and again["pid"] == st["pid"]

    ok(vm.status.stop.post())
    assert vm.status.current.get()["status"] == "stopped"
    assert not Path(f"/proc/{st['pid']}").exists()
    ok(vm.delete())
    with pytest.raises(ResourceException):
        vm.config.get()
    assert not image.exists() and not image.parent.exists()
    print(f"\nAPI create+start of a TCG VM: {created_and_started:.1f} s")


def test_bad_config_is_a_400_naming_the_key(node: tuple[Corrald, str]) -> None:
    daemon, _ = node
    prox = ProxmoxAPI("127.0.0.1", user="admin@pve", password=daemon.password,
                      verify_ssl=daemon.ca, port=daemon.port, timeout=60)  # fmt: skip
    vmid = new_vmid()
    for params, key in (
        ({"net0": "virtio=zz,bridge=vmbr0"}, "net0"),
        ({"colour": "red"}, "colour"),
        ({"memory": 1 << 30, "kvm": 0}, "memory"),
        ({"virtio0": "nosuch:1"}, "virtio0"),
    ):
        with pytest.raises(ResourceException) as err:
            prox.nodes(NODE).qemu.create(vmid=vmid, **params)
        assert err.value.status_code == 400 and key in str(err.value), (params, err.value)
    with pytest.raises(ResourceException):
        prox.nodes(NODE).qemu(vmid).config.get()
