"""The node's guest-status round writes etcd only when figures move (issue 16 item 4).

In-memory store and a virtual clock; a driver whose figures the test sets.
"""

from __future__ import annotations

from typing import Any

import pytest

from corral.cluster import guest_status, keys, metrics_rrd
from corral.cluster.clock import VirtualClock
from corral.cluster.guest_driver import GuestDriver
from corral.cluster.store_memory import MemoryStore

NODE = "node1"


class Figures(GuestDriver):
    """Answers what `self.now` holds; records how it was asked."""

    def __init__(self) -> None:
        super().__init__(node=NODE, data_dir="/nonexistent")
        self.now: dict[int, dict[str, Any]] = {}
        self.cached: list[bool] = []

    def status(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        return dict(self.now.get(vmid, {"status": "stopped"}))

    def status_many(
        self, items: list[tuple[int, dict[str, Any]]], *, cached: bool = False
    ) -> dict[int, dict[str, Any]]:
        self.cached.append(cached)
        return {vmid: self.status(vmid, config) for vmid, config in items}


def _idle(vmid: int, **over: Any) -> dict[str, Any]:
    return {"vmid": vmid, "status": "running", "cpu": 0.001, "mem": 200_000,
            "maxmem": 64 << 20, "disk": 2 << 20, "netin": 0, "netout": 0,
            "uptime": 10, "pid": 4000 + vmid, **over}  # fmt: skip


@pytest.fixture
def node() -> tuple[MemoryStore, Figures, dict[str, Any]]:
    store = MemoryStore(clock=VirtualClock())
    drv = Figures()
    for vmid in range(100, 110):
        store.put(keys.guest(vmid), {"vmid": vmid, "type": "lxc", "node": NODE, "config": {}})
        drv.now[vmid] = _idle(vmid)
    return store, drv, {"drivers": {"lxc": drv}}


def _revision(store: MemoryStore) -> int:
    """The last revision any of the node's status keys was written at."""
    kvs = store.range(keys.guest_status_prefix(NODE))
    assert kvs
    return max(kv.mod_revision for kv in kvs)


def _round(store: MemoryStore, services: dict[str, Any], after: float = 2.0) -> dict[str, Any]:
    assert isinstance(store.clock, VirtualClock)
    store.clock.advance(after)
    return guest_status.publish_status_for(store, NODE, services)


def _written(store: MemoryStore, before: dict[str, int]) -> list[str]:
    """The node's status keys written since `before` (key -> mod_revision); updates it."""
    now = {kv.key: kv.mod_revision for kv in store.range(keys.guest_status_prefix(NODE))}
    out = [k for k, rev in now.items() if before.get(k) != rev]
    before.clear()
    before.update(now)
    return out


def test_idle_guests_are_written_once_a_refresh_period_each_and_spread(node: Any) -> None:
    store, drv, services = node
    first = _round(store, services)
    assert set(first) == {str(v) for v in range(100, 110)} and drv.cached[-1] is True
    seen: dict[str, int] = {}
    _written(store, seen)
    per_guest: dict[str, int] = {}
    per_round = []
    # Idle for two periods: uptime ticks, cpu and memory wobble below their thresholds.
    rounds = int(2 * guest_status.REFRESH / 2.0)
    for i in range(rounds):
        for vmid in drv.now:
            drv.now[vmid] = _idle(vmid, uptime=12 + 2 * i, cpu=0.001 + 0.001 * (i % 2),
                                  mem=200_000 + 4096 * i)  # fmt: skip
        doc = _round(store, services)
        written = _written(store, seen)
        per_round.append(len(written))
        for key in written:
            per_guest[key] = per_guest.get(key, 0) + 1
            assert doc[key.rsplit("/", 1)[1]]["time"] == store.clock.time()  # re-timed
    assert set(per_guest.values()) == {2}, "each guest: once a period, never every round"
    assert max(per_round) <= 2, f"refreshes came in bursts: {per_round}"
    assert guest_status.node_live(store, NODE) == services["status_doc"]


def test_a_state_change_is_written_in_its_round(node: Any) -> None:
    store, drv, services = node
    _round(store, services)
    rev = _revision(store)
    drv.now[105] = {"vmid": 105, "status": "stopped", "cpu": 0, "mem": 0}
    doc = _round(store, services)
    assert _revision(store) > rev
    assert doc["105"]["status"] == "stopped" and doc["105"]["time"] == store.clock.time()
    assert doc["104"]["time"] < store.clock.time()  # the others were not re-timed
    drv.now[106] = _idle(106, frozen=1)
    assert _round(store, services)["106"]["frozen"] == 1


@pytest.mark.parametrize(
    ("field", "value", "written"),
    [
        ("cpu", 0.004, False),
        ("cpu", 0.2, True),
        ("mem", 200_000 + (1 << 20) - 1, False),
        ("mem", 200_000 + (2 << 20), True),
        ("netin", 5 << 20, True),
        ("maxmem", 128 << 20, True),  # a config-derived field: any change
        ("mem", None, True),  # a figure turning unknown is news
    ],
)
def test_thresholds(node: Any, field: str, value: Any, written: bool) -> None:
    store, drv, services = node
    _round(store, services)
    rev = _revision(store)
    entry = _idle(101, **{field: value})
    if value is None:
        del entry[field]
    drv.now[101] = entry
    _round(store, services)
    assert (_revision(store) > rev) is written


def test_everything_is_refreshed_within_a_period(node: Any) -> None:
    store, drv, services = node
    _round(store, services)
    rev = _revision(store)
    for vmid in drv.now:
        drv.now[vmid] = _idle(vmid, uptime=40)
    doc = _round(store, services, after=guest_status.REFRESH)
    assert _revision(store) > rev
    assert {e["uptime"] for e in doc.values()} == {40}
    assert {e["time"] for e in doc.values()} == {store.clock.time()}


def test_guests_coming_and_going_are_written(node: Any) -> None:
    store, drv, services = node
    _round(store, services)
    store.delete(keys.guest(109))
    assert "109" not in _round(store, services)
    store.put(keys.guest(120), {"vmid": 120, "type": "lxc", "node": NODE, "config": {}})
    drv.now[120] = _idle(120)
    assert _round(store, services)["120"]["status"] == "running"
    assert guest_status.guest_live(store, NODE, 120)["pid"] == 4120
    assert store.get(keys.guest_status(NODE, 109)) is None


def test_a_round_writes_only_the_guests_that_moved(node: Any) -> None:
    store, drv, services = node
    _round(store, services)
    before = {kv.key: kv.mod_revision for kv in store.range(keys.guest_status_prefix(NODE))}
    drv.now[103] = _idle(103, cpu=0.3)
    _round(store, services)
    after = {kv.key: kv.mod_revision for kv in store.range(keys.guest_status_prefix(NODE))}
    assert [k for k in after if after[k] != before[k]] == [keys.guest_status(NODE, 103)]


def test_the_first_round_deletes_what_an_earlier_run_left(node: Any) -> None:
    """A guest destroyed while its node was down: its key, left under the node's old
    lease, is deleted by the node's first round, not kept until that lease expires."""
    store, _drv, services = node
    store.put(keys.guest_status(NODE, 555), {"status": "running", "time": 1})
    store.put(keys.guest_status("other", 556), {"status": "running", "time": 1})
    assert "555" not in _round(store, services)
    assert store.get(keys.guest_status(NODE, 555)) is None
    assert store.get(keys.guest_status("other", 556)) is not None  # another node's


def test_a_tasks_end_writes_its_guest_alone(node: Any) -> None:
    """StatusAtEnd's write is one guest's key, whatever the node holds."""
    store, drv, services = node
    _round(store, services)
    drv.now[104] = _idle(104, status="stopped")
    rec = {"vmid": 104, "type": "lxc", "node": NODE, "config": {}}
    end = guest_status.StatusAtEnd(store, NODE, services, rec)
    ops = end.begin()
    try:
        assert [(op[0], op[1]) for op in ops] == [("put", keys.guest_status(NODE, 104))]
        assert store.txn([], ops)
    finally:
        end.end(True)
    assert guest_status.guest_live(store, NODE, 104)["status"] == "stopped"
    assert services["status_doc"]["104"]["status"] == "stopped"
    gone = guest_status.StatusAtEnd(store, NODE, services, {**rec, "node": "elsewhere"})
    ops = gone.begin()
    try:
        assert ops == [("delete", keys.guest_status(NODE, 104))]
        assert store.txn([], ops)
    finally:
        gone.end(True)
    assert "104" not in services["status_doc"] and guest_status.guest_live(store, NODE, 104) == {}


def test_history_records_an_unchanged_entry_once_a_step(tmp_path: Any) -> None:
    """An entry kept (not re-timed) still holds now: the history gets a sample per
    60 s step from it (not one per 20 s round: its figures did not move)."""
    if metrics_rrd.available() is not None:
        pytest.skip(metrics_rrd.available())
    store = MemoryStore(clock=VirtualClock())
    rrd = metrics_rrd.RrdStore(tmp_path)
    now = 1_800_000_000
    store.put(keys.guest_status(NODE, 300), {"cpu": 0.5, "cpus": 1, "time": now - 10})
    assert metrics_rrd.record_round(rrd, store, now=now) == 1
    assert metrics_rrd.record_round(rrd, store, now=now + 20) == 0
    assert metrics_rrd.record_round(rrd, store, now=now + 40) == 0
    assert metrics_rrd.record_round(rrd, store, now=now + 60) == 1
    # A moved (re-timed) entry is recorded in its round.
    store.put(keys.guest_status(NODE, 300), {"cpu": 0.9, "cpus": 1, "time": now + 75})
    assert metrics_rrd.record_round(rrd, store, now=now + 80) == 1
    # Older than a node re-publishes everything: left to its own time (not recorded again).
    assert metrics_rrd.record_round(rrd, store, now=now + 200) == 0


def test_a_round_measures_without_holding_up_a_tasks_end(node: Any) -> None:
    """A driver's pass can wait a long time (libvirt answers nothing about any VM
    while one is being destroyed: 1.2-1.6 s here), and every task end on the node
    takes the status lock. The round measures without it, and keeps the entry a
    task wrote meanwhile: its own measurement, taken before, is the older."""
    import threading

    store, drv, services = node
    _round(store, services)
    rec = {"vmid": 104, "type": "lxc", "node": NODE, "config": {}}
    ended = threading.Event()

    def task_end() -> None:
        drv.now[104] = _idle(104, status="stopped")
        end = guest_status.StatusAtEnd(store, NODE, services, rec)
        ops = end.begin()
        try:
            assert store.txn([], ops)
        finally:
            end.end(True)
        ended.set()

    measure = drv.status_many

    def slow_pass(items: Any, *, cached: bool = False) -> dict[int, dict[str, Any]]:
        taken = measure(items, cached=cached)  # 104 still running
        worker = threading.Thread(target=task_end)
        worker.start()
        ended.wait(5)  # the old round held the lock here: the end waited for it
        assert taken[104]["status"] == "running"
        return taken

    drv.status_many = slow_pass  # type: ignore[method-assign]
    try:
        _round(store, services)
    finally:
        drv.status_many = measure  # type: ignore[method-assign]
    assert ended.is_set(), "the task's end waited for the round's measurement"
    assert guest_status.guest_live(store, NODE, 104)["status"] == "stopped"
    assert services["status_doc"]["104"]["status"] == "stopped"
    # The next round measures again and agrees.
    _round(store, services)
    assert services["status_doc"]["104"]["status"] == "stopped"
