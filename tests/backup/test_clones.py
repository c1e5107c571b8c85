"""Clones and templates of CTs through proxmoxer against a real corrald: full
clones (same storage, and btrfs -> dir streamed), a template on btrfs with a
linked clone, and the refusals. Each copy starts and shows the original's
marker, with its own MAC address."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from proxmoxer import ProxmoxAPI, ResourceException

from corral.cluster import keys
from corral.cluster.store import Store
from tests.backup.conftest import NODE, attach, destroy_all, new_vmid, rootfs_path, task_ok
from tests.util import Corrald

pytestmark = pytest.mark.timeout(300)
NET = "name=eth0,ip=10.251.93.5/24"  # no bridge: the MAC is what matters here


def _hwaddr(prox: ProxmoxAPI, vmid: int) -> str:
    net = prox.nodes(NODE).lxc(vmid).config.get()["net0"]
    return next(p.split("=", 1)[1] for p in net.split(",") if p.startswith("hwaddr="))


def test_full_clones_start_with_the_marker(
    node: Corrald, prox: ProxmoxAPI, store: Store, btrfs: str, make_ct: Callable[..., int]
) -> None:
    made: list[int] = []
    try:
        for source_storage, target_storage in (("local", None), (btrfs, "local")):
            vmid = make_ct(source_storage, net0=NET)
            ct = prox.nodes(NODE).lxc(vmid)
            task_ok(prox, ct.status.start.post())
            attach(node, vmid, "sh", "-c", f"echo clone-me-{vmid} > /marker && sync")
            newid = new_vmid()
            made.append(newid)
            params = {"newid": newid, "full": 1, "hostname": f"copy{newid}"}
            if target_storage:
                params["storage"] = target_storage
            task_ok(prox, ct.clone.post(**params))  # a running source: frozen meanwhile
            assert ct.status.current.get()["status"] == "running"
            copy = prox.nodes(NODE).lxc(newid)
            cfg = copy.config.get()
            assert cfg["hostname"] == f"copy{newid}"
            want = target_storage or source_storage
            assert cfg["rootfs"].startswith(f"{want}:") and f"-{newid}-" in cfg["rootfs"], cfg
            assert _hwaddr(prox, newid) != _hwaddr(prox, vmid)
            task_ok(prox, copy.status.start.post())
            assert attach(node, newid, "cat", "/marker").strip() == f"clone-me-{vmid}"
            assert store.get_value(keys.guest(newid))["lock"] is None
    finally:
        destroy_all(prox, made)


def test_template_and_linked_clone(
    node: Corrald, prox: ProxmoxAPI, store: Store, btrfs: str, make_ct: Callable[..., int]
) -> None:
    vmid = make_ct(btrfs)
    ct = prox.nodes(NODE).lxc(vmid)
    task_ok(prox, ct.status.start.post())
    attach(node, vmid, "sh", "-c", "echo base > /marker && sync")
    task_ok(prox, ct.status.stop.post())
    task_ok(prox, ct.template.post())
    cfg = ct.config.get()
    assert int(cfg["template"]) == 1 and "basevol-" in cfg["rootfs"], cfg
    with pytest.raises(ResourceException) as err:
        ct.status.start.post()
    assert err.value.status_code == 409 and "template" in str(err.value)
    newid = new_vmid()
    try:
        task_ok(prox, ct.clone.post(newid=newid))  # a template: linked by default
        copy = prox.nodes(NODE).lxc(newid)
        assert "template" not in copy.config.get()
        task_ok(prox, copy.status.start.post())
        assert attach(node, newid, "cat", "/marker").strip() == "base"
        attach(node, newid, "sh", "-c", "echo changed > /marker && sync")
        base = rootfs_path(store, vmid, node)
        assert (base / "marker").read_text().strip() == "base"  # the base never changes
    finally:
        destroy_all(prox, [newid])


def test_clone_refusals(prox: ProxmoxAPI, btrfs: str, make_ct: Callable[..., int]) -> None:
    vmid = make_ct(btrfs)
    other = make_ct(btrfs)
    ct = prox.nodes(NODE).lxc(vmid)
    cases = [
        ({"newid": new_vmid(), "full": 0}, 400, "full"),
        ({"newid": other, "full": 1}, 409, "exists"),
        ({"newid": vmid, "full": 1}, 400, "newid"),
        ({"newid": new_vmid(), "full": 1, "storage": "nosuch"}, 400, "storage"),
        ({"newid": 5, "full": 1}, 400, "newid"),
    ]
    for params, status, word in cases:
        with pytest.raises(ResourceException) as err:
            ct.clone.post(**params)
        assert err.value.status_code == status and word in str(err.value), (params, err.value)
