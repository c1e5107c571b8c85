"""CT backup and restore through proxmoxer against a real corrald.

The issue's check first: snapshot, rollback and delete a snapshot of a CT;
clone it (full) to a new VMID; vzdump it to `local`; restore the archive to
another VMID; all tasks OK and the restored CT starts (showing its marker).
Then the modes and compressions, dir -> btrfs, the content listing, notes,
deletion, and the refusals."""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Callable

import pytest
from proxmoxer import ProxmoxAPI, ResourceException

from corral.cluster import keys
from corral.cluster.store import Store
from tests.backup.conftest import NODE, attach, destroy_all, new_vmid, task_ok
from tests.util import Corrald

pytestmark = pytest.mark.timeout(400)


def _backups(prox: ProxmoxAPI, vmid: int, storage: str = "local") -> list[dict]:
    rows = prox.nodes(NODE).storage(storage).content.get(content="backup", vmid=vmid)
    return sorted(rows, key=lambda r: r["volid"])


def test_issue_check_snapshot_clone_vzdump_restore(
    node: Corrald, prox: ProxmoxAPI, store: Store, btrfs: str, make_ct: Callable[..., int]
) -> None:
    n = prox.nodes(NODE)
    vmid = make_ct(btrfs)
    ct = n.lxc(vmid)
    task_ok(prox, ct.status.start.post())
    attach(node, vmid, "sh", "-c", "echo before > /marker && sync")
    task_ok(prox, ct.snapshot.post(snapname="check"))
    attach(node, vmid, "sh", "-c", "echo after > /marker && sync")
    task_ok(prox, ct.snapshot("check").rollback.post())
    task_ok(prox, ct.snapshot("check").delete())
    assert [s["name"] for s in ct.snapshot.get()] == ["current"]
    task_ok(prox, ct.status.start.post())
    assert attach(node, vmid, "cat", "/marker").strip() == "before"

    cloneid, restoreid = new_vmid(), new_vmid()
    try:
        task_ok(prox, ct.clone.post(newid=cloneid, full=1))
        upid = n.vzdump.post(vmid=vmid, storage="local", compress="zstd", mode="snapshot",
                             **{"notes-template": "{{guestname}} on {{node}}"})  # fmt: skip
        task_ok(prox, upid)
        rows = _backups(prox, vmid)
        assert len(rows) == 1, rows
        volid = rows[0]["volid"]
        name = volid.split("/", 1)[1]
        assert name.startswith(f"vzdump-lxc-{vmid}-") and name.endswith(".tar.zst"), name
        assert rows[0]["notes"] == f"ct{vmid} on {NODE}" and rows[0]["format"] == "tar.zst"
        assert ct.status.current.get()["status"] == "running"  # snapshot mode: never stopped
        assert f"hostname: ct{vmid}" in n.vzdump.extractconfig.get(volume=volid)
        task_ok(prox, n.lxc.create(vmid=restoreid, ostemplate=volid, restore=1, storage="local"))
        restored = n.lxc(restoreid)
        cfg = restored.config.get()
        assert cfg["rootfs"].startswith(f"local:{restoreid}/"), cfg  # btrfs -> dir
        assert cfg["hostname"] == f"ct{vmid}" and int(cfg["memory"]) == 64
        task_ok(prox, restored.status.start.post())
        assert attach(node, restoreid, "cat", "/marker").strip() == "before"
        task_ok(prox, n.lxc(cloneid).status.start.post())
        assert attach(node, cloneid, "cat", "/marker").strip() == "before"
        # The archive is a plain tar GNU tar reads: the config, then the root.
        path = node.data_dir / "local" / "dump" / name
        with subprocess.Popen(["zstd", "-dc", str(path)], stdout=subprocess.PIPE) as proc:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                names = [m.name for m in tar]
        assert names[0] == "./etc/vzdump/pct.conf" and "./marker" in names
        # Deletable through the storage API, which removes the file.
        task_ok(prox, n.storage("local").content(volid).delete())
        assert not path.exists() and _backups(prox, vmid) == []
    finally:
        destroy_all(prox, [cloneid, restoreid])


@pytest.mark.parametrize("mode,compress", [("stop", "gzip"), ("suspend", "0")])
def test_modes_dir_to_btrfs(
    node: Corrald, prox: ProxmoxAPI, btrfs: str, make_ct: Callable[..., int],
    mode: str, compress: str,
) -> None:  # fmt: skip
    n = prox.nodes(NODE)
    vmid = make_ct("local")
    task_ok(prox, n.lxc(vmid).status.start.post())
    attach(node, vmid, "sh", "-c", f"echo {mode} > /marker && sync")
    upid = n.vzdump.post(vmid=vmid, storage="local", mode=mode, compress=compress)
    task_ok(prox, upid)
    log = [r["t"] for r in n.tasks(upid).log.get(limit=500)]
    assert n.lxc(vmid).status.current.get()["status"] == "running", log
    (row,) = _backups(prox, vmid)
    assert row["volid"].endswith(".tar.gz" if compress == "gzip" else ".tar"), row
    newid = new_vmid()
    try:
        task_ok(prox, n.lxc.create(vmid=newid, ostemplate=row["volid"], restore=1,
                                   storage=btrfs, hostname="restored", unique=1))  # fmt: skip
        cfg = n.lxc(newid).config.get()
        assert cfg["rootfs"].startswith(f"{btrfs}:") and cfg["hostname"] == "restored", cfg
        task_ok(prox, n.lxc(newid).status.start.post())
        assert attach(node, newid, "cat", "/marker").strip() == mode
    finally:
        destroy_all(prox, [newid])
        task_ok(prox, n.storage("local").content(row["volid"]).delete())


def test_restore_over_the_same_vmid(
    node: Corrald, prox: ProxmoxAPI, make_ct: Callable[..., int]
) -> None:
    n = prox.nodes(NODE)
    vmid = make_ct("local")
    root = node.data_dir / "local" / "images" / str(vmid)
    task_ok(prox, n.lxc(vmid).status.start.post())
    attach(node, vmid, "sh", "-c", "echo saved > /marker && sync")
    task_ok(prox, n.vzdump.post(vmid=vmid, storage="local", mode="stop", compress="zstd"))
    (row,) = _backups(prox, vmid)
    attach(node, vmid, "sh", "-c", "echo lost > /marker && sync")
    with pytest.raises(ResourceException) as err:
        n.lxc.create(vmid=vmid, ostemplate=row["volid"], restore=1)
    assert err.value.status_code == 400 and "force" in str(err.value)
    task_ok(prox, n.lxc(vmid).status.stop.post())
    task_ok(prox, n.lxc.create(vmid=vmid, ostemplate=row["volid"], restore=1, force=1))
    assert len(os.listdir(root)) == 1  # the old rootfs is gone, the restored one is there
    task_ok(prox, n.lxc(vmid).status.start.post())
    assert attach(node, vmid, "cat", "/marker").strip() == "saved"
    task_ok(prox, n.storage("local").content(row["volid"]).delete())


def test_refusals(prox: ProxmoxAPI, store: Store, make_ct: Callable[..., int]) -> None:
    n = prox.nodes(NODE)
    vmid = make_ct("local", force=0, unique=0)  # as Ansible sends them: a plain create
    cases = [
        ({"vmid": vmid, "compress": "lzo"}, "compress"),
        ({"vmid": 99999999}, "vmid"),
        ({"vmid": vmid, "storage": "nosuch"}, "storage"),
        ({"vmid": vmid, "mode": "freeze"}, "mode"),
        ({}, "vmid"),
    ]
    cases.append(({"pool": "crlnosuchpool"}, "pool"))
    for params, word in cases:
        with pytest.raises(ResourceException) as err:
            n.vzdump.post(**params)
        assert err.value.status_code == 400 and word in str(err.value), (params, err.value)
    # A pool's members on this node are backed up.
    store.put("access/pools/crlbkpool", {"poolid": "crlbkpool", "comment": "", "vms": [vmid],
                                         "storage": []})  # fmt: skip
    try:
        task_ok(prox, n.vzdump.post(pool="crlbkpool", storage="local", compress="0"))
        (row,) = _backups(prox, vmid)
        n.storage("local").content(row["volid"]).delete()
    finally:
        store.delete("access/pools/crlbkpool")
    store.put(keys.storage("crlbknobk"), {"storage": "crlbknobk", "type": "dir",
              "path": "/nonexistent/crlbknobk", "content": "iso"})  # fmt: skip
    try:
        with pytest.raises(ResourceException) as err:
            n.vzdump.post(vmid=vmid, storage="crlbknobk")
        assert err.value.status_code == 400 and "content type 'backup'" in str(err.value)
    finally:
        store.delete(keys.storage("crlbknobk"))
    for bad in ("local:vztmpl/x.tar.gz", "local:backup/vzdump-qemu-100-2024_01_01-00_00_00.tar",
                "nonsense"):  # fmt: skip
        with pytest.raises(ResourceException) as err:
            n.lxc.create(vmid=new_vmid(), ostemplate=bad, restore=1)
        assert err.value.status_code == 400 and "ostemplate" in str(err.value), (bad, err.value)
