"""CT snapshots through proxmoxer against a real corrald: a busybox container on
btrfs writes a marker, is snapshotted while running (frozen meanwhile), changes
the marker, rolls back and shows the old one; the tree, the snapshot's stored
config, delete, and the refusals (dir storage cannot snapshot, bad names,
duplicates) are checked on the way."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from proxmoxer import ProxmoxAPI, ResourceException

from corral.cluster import guests
from corral.cluster.store import Store
from tests.backup.conftest import NODE, attach, rootfs_path, task_ok
from tests.util import Corrald

pytestmark = pytest.mark.timeout(300)


def test_snapshot_rollback_delete_running_ct(
    node: Corrald, prox: ProxmoxAPI, store: Store, btrfs: str, make_ct: Callable[..., int]
) -> None:
    vmid = make_ct(btrfs)
    ct = prox.nodes(NODE).lxc(vmid)
    task_ok(prox, ct.status.start.post())
    attach(node, vmid, "sh", "-c", "echo one > /marker && sync")

    task_ok(prox, ct.snapshot.post(snapname="first", description="marker one"))
    log = prox.nodes(NODE).tasks  # the task log says the CT was frozen and thawed
    upid = ct.snapshot.post(snapname="second")
    task_ok(prox, upid)
    lines = [row["t"] for row in log(upid).log.get()]
    assert any("frozen" in t for t in lines) and any("thawed" in t for t in lines), lines
    assert ct.status.current.get()["status"] == "running"

    tree = {row["name"]: row for row in ct.snapshot.get()}
    assert set(tree) == {"first", "second", "current"}
    assert "parent" not in tree["first"] and tree["second"]["parent"] == "first"
    assert tree["current"]["parent"] == "second" and tree["current"]["running"] == 1
    assert tree["first"]["description"] == "marker one"

    # The snapshot keeps the config of its moment; a later change does not touch it.
    ct.config.put(memory=96)
    snapcfg = ct.snapshot("first").config.get()
    assert int(snapcfg["memory"]) == 64 and snapcfg["description"] == "marker one"
    assert int(ct.config.get(snapshot="first")["memory"]) == 64  # Proxmox's other door
    ct.snapshot("first").config.put(description="the first marker")
    assert ct.snapshot("first").config.get()["description"] == "the first marker"

    attach(node, vmid, "sh", "-c", "echo two > /marker && sync")
    task_ok(prox, ct.snapshot("first").rollback.post(start=1))
    assert ct.status.current.get()["status"] == "running"
    assert attach(node, vmid, "cat", "/marker").strip() == "one"
    assert int(ct.config.get()["memory"]) == 64  # the config came back too
    tree = {row["name"]: row for row in ct.snapshot.get()}
    assert tree["current"]["parent"] == "first"

    # Deleting the middle snapshot re-parents its child and removes its subvolume.
    task_ok(prox, ct.snapshot("first").delete())
    tree = {row["name"]: row for row in ct.snapshot.get()}
    assert set(tree) == {"second", "current"} and "parent" not in tree["second"]
    assert "parent" not in tree["current"]
    root = rootfs_path(store, vmid, node)
    snaps = [e for e in os.listdir(root.parent) if e.startswith(root.name + "@")]
    assert snaps == [f"{root.name}@second"], snaps
    task_ok(prox, ct.snapshot("second").delete())
    assert [row["name"] for row in ct.snapshot.get()] == ["current"]


def test_refusals(prox: ProxmoxAPI, store: Store, btrfs: str, make_ct: Callable[..., int]) -> None:
    on_dir = make_ct("local")
    with pytest.raises(ResourceException) as err:
        prox.nodes(NODE).lxc(on_dir).snapshot.post(snapname="s1")
    assert err.value.status_code == 501 and "rootfs" in str(err.value), err.value
    assert [r["name"] for r in prox.nodes(NODE).lxc(on_dir).snapshot.get()] == ["current"]

    vmid = make_ct(btrfs)
    ct = prox.nodes(NODE).lxc(vmid)
    for bad in ("1abc", "current", "a/b", "x" * 41):
        with pytest.raises(ResourceException) as err:
            ct.snapshot.post(snapname=bad)
        assert err.value.status_code == 400 and "snapname" in str(err.value), (bad, err.value)
    task_ok(prox, ct.snapshot.post(snapname="s1"))
    with pytest.raises(ResourceException) as err:
        ct.snapshot.post(snapname="s1")
    assert err.value.status_code == 409
    with pytest.raises(ResourceException) as err:
        ct.snapshot("nope").rollback.post()
    assert err.value.status_code == 404
    # A guest locked by another long operation (a backup here) refuses at once.
    guests.set_lock(store, vmid, "backup")
    try:
        for call in (lambda: ct.snapshot.post(snapname="s2"),
                     lambda: ct.snapshot("s1").rollback.post(),
                     lambda: ct.snapshot("s1").delete(),
                     lambda: ct.clone.post(newid=vmid + 1, full=1)):  # fmt: skip
            with pytest.raises(ResourceException) as err:
                call()
            assert err.value.status_code == 409 and "locked (backup)" in str(err.value)
    finally:
        guests.set_lock(store, vmid, None, expect="backup")
    task_ok(prox, ct.snapshot("s1").delete())
