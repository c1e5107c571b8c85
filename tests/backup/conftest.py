"""One real corrald for the guest-operation tests (snapshots, clones, backups):
its own etcd, the real LXC and QEMU drivers, `local` (dir) and a btrfs
storage on a loop-mounted file. Everything is removed even when a test fails."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.tools import Tasks

from corral.cluster import keys
from corral.cluster.store import Store
from tests.lxc.helpers import cleanup_lxcpath
from tests.nodes import node_store, vm_node
from tests.storage import loopfs
from tests.util import Corrald, vmid_picker

NODE = "node1"
BTRFS = "crlbkbtrfs"
MiB = 1 << 20


new_vmid = vmid_picker(60000, 69999)


@pytest.fixture(scope="package")
def node(guest_files: dict[str, str]) -> Iterator[Corrald]:
    """corrald with the LXC driver and the QEMU driver on its own embed root; the
    tiny test guest's kernel and initramfs in `local:snippets/`."""
    with vm_node("crlbk", guest_files, node=NODE) as (daemon, _):
        yield daemon


@pytest.fixture(scope="package")
def store(node: Corrald) -> Iterator[Store]:
    with node_store(node) as s:
        yield s


@pytest.fixture(scope="package")
def btrfs(node: Corrald, store: Store) -> Iterator[str]:
    """A btrfs storage (snapshots, linked clones) on a loop-mounted file."""
    base = node.data_dir.parent / "btrfs"
    base.mkdir(exist_ok=True)
    mnt = str(base / "mnt")
    with loopfs.loop_fs(
        str(base / "btrfs.img"), mnt, size=600 * MiB, mkfs=["mkfs.btrfs", "-q", "-f"]
    ):
        os.chmod(mnt, 0o755)
        conf = {"storage": BTRFS, "type": "btrfs", "path": f"{mnt}/store",
                "content": "rootdir,images,backup"}  # fmt: skip
        store.put(keys.storage(BTRFS), conf)
        try:
            yield BTRFS
        finally:
            cleanup_lxcpath(str(node.data_dir / "lxc"))  # nothing may hold the mount
            store.delete(keys.storage(BTRFS))


@pytest.fixture(scope="package")
def template(node: Corrald) -> str:
    return node.build_template(timeout=120)


@pytest.fixture(scope="package")
def prox(node: Corrald) -> ProxmoxAPI:
    return ProxmoxAPI(
        "127.0.0.1", user="admin@pve", password=node.password, verify_ssl=False,
        port=node.port, timeout=60,
    )  # fmt: skip


def task_ok(prox: ProxmoxAPI, upid: str, timeout: int = 300) -> dict[str, Any]:
    st = Tasks.blocking_status(prox, upid, timeout=timeout, polling_interval=0.1)
    assert st is not None and st["exitstatus"] == "OK", (
        st,
        prox.nodes(NODE).tasks(upid).log.get(limit=100),
    )
    return st


def task_fails(prox: ProxmoxAPI, upid: str, timeout: int = 300) -> str:
    st = Tasks.blocking_status(prox, upid, timeout=timeout, polling_interval=0.1)
    assert st is not None and st["exitstatus"] != "OK", st
    return str(st["exitstatus"])


def attach(node: Corrald, vmid: int, *argv: str) -> str:
    cmd = ["lxc-attach", "-P", str(node.data_dir / "lxc"), "-n", str(vmid), "--clear-env",
           "--", *argv]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def make_ct(node: Corrald, prox: ProxmoxAPI, template: str) -> Iterator[Callable[..., int]]:
    """Create busybox CTs (rootfs on the given storage); all destroyed afterwards."""
    made: list[int] = []

    def make(storage: str, *, vmid: int | None = None, **extra: Any) -> int:
        vmid = vmid or new_vmid()
        made.append(vmid)
        upid = prox.nodes(NODE).lxc.create(
            vmid=vmid, ostemplate=template, rootfs=f"{storage}:0.1", hostname=f"ct{vmid}",
            memory=64, swap=0, **extra,
        )  # fmt: skip
        task_ok(prox, upid)
        return vmid

    yield make
    destroy_all(prox, made)


def destroy_all(prox: ProxmoxAPI, vmids: list[int]) -> None:
    for vmid in vmids:
        for type in ("lxc", "qemu"):
            try:
                api = getattr(prox.nodes(NODE), type)(vmid)
                api.config.get()
            except Exception:  # noqa: BLE001 - not of this type, or gone
                continue
            try:
                if api.status.current.get()["status"] != "stopped":
                    task_ok(prox, api.status.stop.post())
                task_ok(prox, api.delete(purge=1))
            except Exception as err:  # noqa: BLE001 - clean the rest anyway
                print(f"cleanup of {vmid} failed: {err}")


def rootfs_path(store: Store, vmid: int, node: Corrald) -> Path:
    """Where a CT's rootfs lives on the host (dir or btrfs storage)."""
    rec = store.get_value(keys.guest(vmid))
    volid = rec["config"]["rootfs"].split(",")[0]
    storage, volname = volid.split(":", 1)
    conf = store.get_value(keys.storage(storage))
    return Path(conf["path"]) / "images" / volname


from tests.storage.conftest import ceph  # noqa: E402, F401  (a real single-node Ceph)

RBD = "crlbkrbd"


@pytest.fixture(scope="package")
def rbd(node: Corrald, store: Store, ceph: Any) -> Iterator[str]:  # noqa: F811
    """An rbd storage on the session's Ceph; QEMU reaches it through librbd."""
    from tests.storage.conftest import RUN

    conf = {"storage": RBD, "type": "rbd", "pool": f"{RUN}pool", "monhost": ceph.monhost,
            "username": "admin", "keyring": ceph.keyring_path, "conf": ceph.conf_path,
            "content": "images"}  # fmt: skip
    store.put(keys.storage(RBD), conf)
    try:
        yield RBD
    finally:
        store.delete(keys.storage(RBD))


@pytest.fixture
def vms(prox: ProxmoxAPI) -> Iterator[list[int]]:
    """VMIDs of VMs a test makes: destroyed afterwards."""
    made: list[int] = []
    yield made
    destroy_all(prox, made)
