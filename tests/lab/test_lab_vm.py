"""VM migration between lab nodes that each run a real libvirtd (`--libvirtd`):
live (the guest keeps running, its shell answers before and after) and offline,
with the disk on the lab's shared storage. Guests run under TCG (`kvm: 0`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cluster import lab as labmod
from corral.cluster.client import Client
from tests.assets import guest
from tests.kvm.serial import Serial
from tests.util import wait_for

PREFIX = "crlw"
SUBNET = "10.249.84.0/24"
VMID = 90300
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labmod.Lab]:
    if not shutil.which("libvirtd"):
        pytest.skip("libvirtd is not installed")
    # Short paths: the serial sockets live under the node's data dir (108-byte limit).
    lab_dir = os.path.join("/tmp", f"crlw-{os.getpid()}", "lab")
    labmod.down(lab_dir, quiet=True)
    lab = labmod.up(lab_dir, 2, SUBNET, PREFIX, libvirtd=True)
    yield lab
    labmod.down(lab_dir, quiet=True)
    shutil.rmtree(os.path.dirname(lab_dir), ignore_errors=True)


def _node(lab: labmod.Lab, name: str) -> Client:
    return Client(socket_path=str(Path(lab.node(name).data_dir, "corrald.sock")), timeout=60)


def _task(lab: labmod.Lab, method: str, path: str, params: dict[str, Any] | None = None) -> None:
    c = _node(lab, "node1")
    upid = c.call(method, path, params)
    node = upid.split(":")[1]

    def done() -> Any:
        st = c.call("GET", f"/nodes/{node}/tasks/{upid}/status")
        return st if st["status"] == "stopped" else None

    status = wait_for(done, 300, 0.2, f"task {upid}")
    if status.get("exitstatus") != "OK":
        log = c.call("GET", f"/nodes/{node}/tasks/{upid}/log", {"limit": 0})
        raise AssertionError(f"{upid}: {status}\n" + "\n".join(x["t"] for x in log))


def _status(lab: labmod.Lab, node: str) -> dict[str, Any]:
    return dict(_node(lab, "node1").call("GET", f"/nodes/{node}/qemu/{VMID}/status/current"))


def _serial(lab: labmod.Lab, node: str) -> Serial:
    run = Path(lab.node(node).data_dir, "qemu")  # each node's own run dir
    return Serial(str(run / f"{VMID}.serial0"), str(run / f"{VMID}.serial0.log"))


def _booted_again(console: Serial, before: str) -> bool:
    text = console.text()
    fresh = text[len(before) :] if text.startswith(before) else text  # appended or new
    return guest.MARKER_READY in fresh


def test_vm_migrates_live_and_offline(lab: labmod.Lab) -> None:
    files = guest.build_guest(Path(lab.dir, "guest"))
    snippets = Path(lab.dir, "shared", "snippets")
    snippets.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["kernel"], snippets / "vmlinuz")
    shutil.copy(files["initrd"], snippets / "initrd.img")
    shared = labmod.SHARED_STORAGE
    _task(lab, "POST", "/nodes/node1/qemu", {
        "vmid": VMID, "name": "mover", "kvm": 0, "memory": 128, "cores": 1,
        "scsi0": f"{shared}:1,format=qcow2", "serial0": "socket",
        "kernel": f"{shared}:snippets/vmlinuz", "initrd": f"{shared}:snippets/initrd.img",
        "cmdline": files["cmdline"], "start": 1,
    })  # fmt: skip
    try:
        console = _serial(lab, "node1")
        console.wait_count(guest.MARKER_READY, 1, timeout=120)
        assert console.run("echo before-$((6*7))") == "before-42"

        _task(lab, "POST", f"/nodes/node1/qemu/{VMID}/migrate", {"target": "node2", "online": 1})
        st = _status(lab, "node2")
        assert st["status"] == "running" and st["qmpstatus"] == "running"
        console.close()
        # The serial chardev now lives in node2's run dir; the same shell answers there,
        # and the guest never booted again.
        console = _serial(lab, "node2")
        console.connect()
        assert console.run("echo after-$((6*7))") == "after-42"
        assert console.count(guest.MARKER_READY) == 0
        console.close()

        _task(lab, "POST", f"/nodes/node2/qemu/{VMID}/status/stop")
        _task(lab, "POST", f"/nodes/node2/qemu/{VMID}/migrate", {"target": "node1"})
        console = _serial(lab, "node1")
        before = console.text()
        _task(lab, "POST", f"/nodes/node1/qemu/{VMID}/status/start")
        assert _status(lab, "node1")["status"] == "running"
        wait_for(lambda: _booted_again(console, before), 120, 0.2, "a boot on node1")
    finally:
        for node in ("node1", "node2"):
            try:
                _task(lab, "POST", f"/nodes/{node}/qemu/{VMID}/status/stop")
                _task(lab, "DELETE", f"/nodes/{node}/qemu/{VMID}")
            except Exception:  # noqa: BLE001 - not on that node
                pass
