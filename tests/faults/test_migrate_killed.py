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
from tests.faults.world import fresh_resources, log_text, lxc_names, start, wait_log
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
    assert one.proc is not None
    os.kill(one.proc.pid, 9)
    one.proc.wait(10)
    one.proc = None
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
