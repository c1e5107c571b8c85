"""History files (real rrdtool) and the push formats, without a daemon.

The record rounds read a real etcd (the session's), as a node does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from corral.cluster import keys, metrics_push, metrics_rrd
from corral.cluster.cluster_view import ClusterView
from corral.cluster.store import Store

pytestmark = pytest.mark.skipif(
    metrics_rrd.available() is not None, reason=str(metrics_rrd.available())
)


def fill(rrd: metrics_rrd.RrdStore, name: str, start: int, seconds: int, cpu: float) -> None:
    for t in range(start, start + seconds, 20):
        rrd.update("pve2-vm", name, {"cpu": cpu, "maxcpu": 2, "mem": 1 << 20, "netin": t}, t)


def test_fetch_answers_as_proxmox(tmp_path: Path) -> None:
    rrd = metrics_rrd.RrdStore(tmp_path)
    now = int(time.time())
    fill(rrd, "100", now - 3000, 1500, 0.1)
    fill(rrd, "100", now - 1500, 1500, 0.6)
    rows = rrd.fetch("pve2-vm", "100", "hour")
    assert len(rows) == 70
    assert all(b["time"] - a["time"] == 60 for a, b in zip(rows, rows[1:], strict=False))
    assert rows[-1]["time"] == 60 * (now // 60) - 60  # the last complete step
    assert "cpu" not in rows[0]  # before the first sample: left out, as Proxmox does
    full = [r for r in rows if "cpu" in r]  # the newest step completes with the next sample
    assert full[-1]["time"] >= rows[-1]["time"] - 60
    assert full[-1]["cpu"] == pytest.approx(0.6) and full[-1]["maxcpu"] == 2
    assert "diskread" not in full[-1]  # never given: unknown, left out
    assert full[-1]["netin"] == pytest.approx(1.0)  # DERIVE: bytes per second
    day = rrd.fetch("pve2-vm", "100", "day", "MAX")
    assert len(day) == 70 and day[-1]["time"] - day[-2]["time"] == 1800
    avg = rrd.fetch("pve2-vm", "100", "day")
    assert max(r.get("cpu", 0) for r in day) >= max(r.get("cpu", 0) for r in avg) - 1e-9 > 0
    assert len(rrd.fetch("pve2-vm", "100", "year")) == 70
    assert rrd.fetch("pve2-vm", "999", "hour") == []


def test_history_survives_a_new_store_and_refuses_old_samples(tmp_path: Path) -> None:
    now = int(time.time())
    first = metrics_rrd.RrdStore(tmp_path)
    fill(first, "101", now - 600, 300, 0.3)
    again = metrics_rrd.RrdStore(tmp_path)  # a restarted daemon
    assert again.update("pve2-vm", "101", {"cpu": 1}, now - 900) is False
    assert again.update("pve2-vm", "101", {"cpu": 0.3}, now - 200) is True
    assert any(r.get("cpu") == pytest.approx(0.3) for r in again.fetch("pve2-vm", "101", "hour"))


@pytest.mark.parametrize("name", ["", "../x", "a/b", "x y", "-1"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        metrics_rrd.RrdStore(tmp_path).path("pve2-vm", name)
    with pytest.raises(ValueError):
        metrics_rrd.RrdStore(tmp_path).path("pve2-storage", "node1/../../etc")


@pytest.mark.parametrize("source", ["store", "view"])
def test_round_records_the_cluster_and_follows_a_migrated_guest(
    tmp_path: Path, store: Store, source: str
) -> None:
    """From etcd, or (as a node does) from the node's in-memory view of it."""
    view = ClusterView(store).start() if source == "view" else None

    def record(rrd: metrics_rrd.RrdStore, t: int) -> int:
        if view is not None:
            assert view.wait_revision(store.revision(), 10)
        return metrics_rrd.record_round(rrd, store, now=t, view=view)

    def prune(rrd: metrics_rrd.RrdStore) -> int:
        if view is not None:
            assert view.wait_revision(store.revision(), 10)
        return metrics_rrd.prune(rrd, store, view=view)

    try:
        _round_records_the_cluster(tmp_path, store, record, prune)
    finally:
        if view is not None:
            view.stop()


def _round_records_the_cluster(
    tmp_path: Path, store: Store, record: Callable[..., int], prune: Callable[..., int]
) -> None:
    rrd = metrics_rrd.RrdStore(tmp_path)
    now = int(time.time())
    host = {"loadavg": ["0.50", "0.4", "0.3"], "memory": {"total": 100, "used": 40},
            "wait": 0.01, "netin": 10, "netout": 20}  # fmt: skip
    store.put(keys.storage_status("na"), {"local": {"total": 1000, "used": 250}})
    for t in range(now - 600, now, 20):
        for i, node in enumerate(("na", "nb")):
            store.put(keys.node_status(node), {"cpu": 0.2 + i, "maxcpu": 4, "host": host,
                                               "time": t})  # fmt: skip
        # The guest runs on na, then moves to nb: nb publishes it from then on.
        on, off = ("na", "nb") if t < now - 300 else ("nb", "na")
        store.put(keys.guest_status(on, 300), {"cpu": 0.25 if on == "na" else 0.75,
                                               "cpus": 1, "time": t})  # fmt: skip
        store.delete(keys.guest_status(off, 300))
        # 2 nodes, a guest, a storage
        assert record(rrd, t) == 4
    cpus = [r["cpu"] for r in rrd.fetch("pve2-vm", "300", "hour") if "cpu" in r]
    assert cpus[0] == pytest.approx(0.25) and cpus[-1] == pytest.approx(0.75)
    assert len(list((tmp_path / "pve2-vm").iterdir())) == 1  # one history, by VMID
    node = [r for r in rrd.fetch("pve2-node", "na", "hour") if "cpu" in r]
    assert node[-1]["memused"] == 40 and node[-1]["loadavg"] == pytest.approx(0.5)
    storage = [r for r in rrd.fetch("pve2-storage", "na/local", "hour") if "used" in r]
    assert storage[-1] == {"time": storage[-1]["time"], "total": 1000, "used": 250}
    # Destroyed guests lose their history; existing ones keep it, running or not.
    store.put(keys.guest(300), {"vmid": 300, "type": "lxc", "node": "nb", "config": {}})
    assert prune(rrd) == 0
    store.delete(keys.guest(300))
    assert prune(rrd) == 1
    assert rrd.fetch("pve2-vm", "300", "hour") == []


def test_graphite_and_influx_formats() -> None:
    status = {"cpu": 0.5, "maxcpu": 4, "uptime": 7, "host": {"loadavg": ["1.00", "0.5", "0.25"],
              "memory": {"used": 3, "total": 9}, "wait": 0.0}}  # fmt: skip
    guest = {"vmid": 100, "name": "web 1", "type": "lxc", "status": "running", "cpu": 0.25,
             "mem": 5, "time": 1.5}  # fmt: skip
    lines = metrics_push.payload(
        "graphite", {"path": "pve.dc"}, "n1", status, {"100": guest},
        {"local": {"total": 10, "used": 2, "type": "dir"}}, 1700000000,
    )  # fmt: skip
    assert "pve.dc.nodes.n1.cpustat.cpu 0.5 1700000000\n" in lines
    assert "pve.dc.nodes.n1.loadavg.avg1 1.00 1700000000\n" in lines
    assert "pve.dc.lxc.100.cpu 0.25 1700000000\n" in lines
    assert "pve.dc.storages.n1.local.used 2 1700000000\n" in lines
    assert not [ln for ln in lines if ".status " in ln or ".name " in ln or ".time " in ln]
    lines = metrics_push.payload("influxdb", {}, "n1", status, {"100": guest}, {}, 1700000000)
    ns = "1700000000000000000"
    assert f"cpustat,object=nodes,host=n1 cpu=0.5,cpus=4,wait=0.0 {ns}\n" in lines
    assert f"system,object=nodes,host=n1 uptime=7 {ns}\n" in lines
    assert (
        'system,object=lxc,vmid=100,nodename=n1,host=web\\ 1 cpu=0.25,mem=5,name="web 1",'
        f'status="running",type="lxc",vmid=100 {ns}\n'
    ) in lines
    chunks = list(metrics_push._batches(["a" * 600 + "\n"] * 5, 1400))
    assert [len(c) for c in chunks] == [1202, 1202, 601]
