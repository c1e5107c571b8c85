"""kill -9 of the source node's corrald in the middle of a restart migration
between two real nodes (two corralds on one external etcd, real LXC, a shared
dir storage). After the source restarts, the guest has not moved and is not
lost: it stays on the source, unlocked, stopped, the task says it was
interrupted; a new migration then moves it and it runs on the target only."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import keys
from corral.cluster.etcd_embed import EmbeddedEtcd
from corral.cluster.store import Store
from corral.cluster.tasks import INTERRUPTED
from tests.faults.conftest import install_template
from tests.faults.world import fresh_resources, kill9, log_text, lxc_names, start, wait_log
from tests.lxc.helpers import cleanup_lxcpath
from tests.util import Corrald, free_ports, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Corrald, Corrald, EmbeddedEtcd, Path]]:
    os.chmod(tmp_path, 0o755)
    etcd = EmbeddedEtcd(tmp_path / "etcd", name="faults", client_port=free_ports(2))
    etcd.start()
    one = Corrald(tmp_path / "one", node="node1", extra=["--etcd", etcd.endpoint])
    two = Corrald(tmp_path / "two", node="node2", extra=["--etcd", etcd.endpoint])
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    try:
        yield one, two, etcd, shared
    finally:
        for n in (two, one):
            n.stop()
            cleanup_lxcpath(str(n.data_dir / "lxc"))
        etcd.stop()


def test_source_killed_mid_restart_migration(
    pair: tuple[Corrald, Corrald, EmbeddedEtcd, Path], vmid: int
) -> None:
    one, two, etcd, shared = pair
    start(one, pause_at=f"CT {vmid} shut down")
    two.start()
    two.password = one.password  # one cluster, one admin
    template = install_template(one)
    s = one.session()
    s.data("POST", "/storage", data={"storage": "shared", "type": "dir", "path": str(shared),
                                     "content": "rootdir", "shared": 1})  # fmt: skip
    s.run_task("POST", "/nodes/node1/lxc", data={"vmid": vmid, "ostemplate": template,
                                                 "rootfs": "shared:1", "start": 1})  # fmt: skip
    assert lxc_names(one, active=True) == {str(vmid)}
    upid = s.data(
        "POST", f"/nodes/node1/lxc/{vmid}/migrate", data={"target": "node2", "restart": 1}
    )
    wait_log(s, upid, f"CT {vmid} shut down")  # stopped here, not yet handed over
    kill9(one)
    # While the source is down the other node says the truth: locked for migration.
    s2 = two.session()
    row = [g for g in fresh_resources(s2) if g.get("vmid") == vmid]
    assert row and row[0].get("lock") == "migrate", row

    start(one)
    s = one.session()
    st = s.wait_task(upid)
    assert st["exitstatus"] == INTERRUPTED, st
    assert "stays on node 'node1', unlocked" in log_text(s, upid)
    store = Store([etcd.endpoint])
    try:
        rec = store.get_value(keys.guest(vmid))
        assert (rec["node"], rec["lock"]) == ("node1", None)
    finally:
        store.close()
    assert s.data("GET", f"/nodes/node1/lxc/{vmid}/status/current")["status"] == "stopped"
    assert lxc_names(one, active=True) == set() and lxc_names(two, active=True) == set()
    assert len(list((shared / "images" / str(vmid)).iterdir())) == 1  # the one volume, kept

    # Not lost: it migrates now, and runs on the target only.
    s.run_task("POST", f"/nodes/node1/lxc/{vmid}/migrate", data={"target": "node2"})
    s2.run_task("POST", f"/nodes/node2/lxc/{vmid}/status/start")
    wait_for(lambda: lxc_names(two, active=True) == {str(vmid)}, 20, 0.1, what="CT on node2")
    assert lxc_names(one, active=True) == set()
    assert s2.data("GET", f"/nodes/node2/lxc/{vmid}/status/current")["status"] == "running"
    s2.run_task("POST", f"/nodes/node2/lxc/{vmid}/status/stop")
    s2.run_task("DELETE", f"/nodes/node2/lxc/{vmid}")
    assert not (shared / "images" / str(vmid)).exists() or not any(
        (shared / "images" / str(vmid)).iterdir()
    )


def test_source_killed_after_copying_a_local_volume(
    pair: tuple[Corrald, Corrald, EmbeddedEtcd, Path], vmid: int
) -> None:
    """`local` is not shared: a restart migration streams the root filesystem to the
    target. The source is killed right after the copy landed there; at its restart
    the copy is removed from the target (it would be an orphan: the guest stays on
    the source, on its own volume). (Both nodes of this pair keep `local` in one
    directory, so the target's copy lands beside the original under another name.)"""
    one, two, etcd, _ = pair
    start(one, pause_at="copied local:")
    two.start()
    two.password = one.password
    template = install_template(one)
    s = one.session()
    s.run_task("POST", "/nodes/node1/lxc", data={"vmid": vmid, "ostemplate": template,
                                                 "rootfs": "local:1", "start": 1})  # fmt: skip
    images = one.data_dir / "local" / "images" / str(vmid)
    original = f"subvol-{vmid}-disk-0.subvol"
    assert sorted(p.name for p in images.iterdir()) == [original]
    upid = s.data(
        "POST", f"/nodes/node1/lxc/{vmid}/migrate", data={"target": "node2", "restart": 1}
    )
    wait_log(s, upid, "copied local:")
    copy = sorted(p.name for p in images.iterdir() if p.name != original)
    assert len(copy) == 1, copy  # made by node2
    kill9(one)

    start(one)
    s = one.session()
    st = s.wait_task(upid)
    assert st["exitstatus"] == INTERRUPTED, st
    text = log_text(s, upid)
    assert f"removed local:{vmid}/{copy[0]} from 'node2'" in text, text
    assert "stays on node 'node1', unlocked" in text
    wait_for(lambda: sorted(p.name for p in images.iterdir()) == [original], 40, 0.2,
             what="the copy removed from the target")  # fmt: skip
    store = Store([etcd.endpoint])
    try:
        rec = store.get_value(keys.guest(vmid))
        assert (rec["node"], rec["lock"]) == ("node1", None)
        assert rec["config"]["rootfs"].startswith(f"local:{vmid}/{original}")
    finally:
        store.close()
    assert lxc_names(one, active=True) == set() and lxc_names(two, active=True) == set()
    s.run_task("DELETE", f"/nodes/node1/lxc/{vmid}")
    assert not images.exists() or list(images.iterdir()) == []


def test_source_killed_after_the_hand_over(
    pair: tuple[Corrald, Corrald, EmbeddedEtcd, Path], vmid: int
) -> None:
    """Killed once the guest belongs to the target, before its source volume was
    freed: at the restart the source volume goes (the guest runs from the copy)."""
    one, two, etcd, _ = pair
    start(one, pause_at="now belongs to node node2")
    two.start()
    two.password = one.password
    template = install_template(one)
    s = one.session()
    s.run_task("POST", "/nodes/node1/lxc", data={"vmid": vmid, "ostemplate": template,
                                                 "rootfs": "local:1"})  # fmt: skip
    images = one.data_dir / "local" / "images" / str(vmid)
    original = f"subvol-{vmid}-disk-0.subvol"
    upid = s.data("POST", f"/nodes/node1/lxc/{vmid}/migrate", data={"target": "node2"})
    wait_log(s, upid, "now belongs to node node2")
    assert len(list(images.iterdir())) == 2  # the source volume and the copy
    kill9(one)

    start(one)
    s = one.session()
    assert s.wait_task(upid)["exitstatus"] == INTERRUPTED
    assert f"removed the source volume local:{vmid}/{original}" in log_text(s, upid)
    [copy] = [p.name for p in images.iterdir()]
    s2 = two.session()
    assert s2.data("GET", f"/nodes/node2/lxc/{vmid}/config")["rootfs"].startswith(
        f"local:{vmid}/{copy}"
    )
    s2.run_task("POST", f"/nodes/node2/lxc/{vmid}/status/start")
    assert lxc_names(two, active=True) == {str(vmid)} and lxc_names(one, active=True) == set()
    s2.run_task("POST", f"/nodes/node2/lxc/{vmid}/status/stop")
    s2.run_task("DELETE", f"/nodes/node2/lxc/{vmid}")
    assert not images.exists() or list(images.iterdir()) == []
