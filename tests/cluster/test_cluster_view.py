"""The in-memory cluster view: fed by one watch, caught up on demand, rebuilt after compaction."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from corral.cluster import keys
from corral.cluster.clock import VirtualClock
from corral.cluster.cluster_view import ClusterView
from corral.cluster.store_api import StoreAPI
from corral.cluster.store_memory import MemoryStore


def guest(vmid: int, node: str = "n1", **config: Any) -> dict[str, Any]:
    return {"vmid": vmid, "type": "lxc", "node": node, "config": {"memory": 256, **config}}


def rows(view: ClusterView) -> dict[int, dict[str, Any]]:
    return {vmid: orjson.loads(orjson.dumps(row)) for vmid, row in view.guest_rows()}


def test_view_follows_the_store(store: StoreAPI) -> None:
    store.put(keys.guest(101), guest(101, hostname="a"))
    store.put(keys.node_info("n1"), {"node": "n1", "nodeid": 1, "fingerprint": "F"})
    view = ClusterView(store).start()
    try:
        assert view.sync(timeout=10)
        assert rows(view)[101]["name"] == "a" and rows(view)[101]["status"] == "unknown"
        assert view.nodes()[0]["status"] == "offline"

        store.put(keys.node_alive("n1"), {})
        store.put(keys.node_status("n1"), {"cpu": 0.5, "maxmem": 100, "mem": 10})
        store.put(keys.guest(102), guest(102, hostname="b", template=1))
        store.put(keys.guest_status("n1", 101), {"status": "running", "mem": 7, "time": 1})
        store.put(keys.storage_status("n1"), {"local": {"active": 1, "type": "dir"}})
        store.put(keys.vmid_reservation(150), {"user": "u"})
        store.put("tasks/n1/x", {"unrelated": True})
        assert view.sync(timeout=10)  # everything written before it is in the view
        got = rows(view)
        assert got[101]["status"] == "running" and got[101]["mem"] == 7 and "time" not in got[101]
        assert got[102]["template"] == 1 and got[102]["id"] == "lxc/102"
        assert got[102]["maxcpu"] == 1  # from the config until live figures say
        assert view.nodes()[0] == {
            "node": "n1",
            "id": "node/n1",
            "type": "node",
            "status": "online",
            "level": "",
            "ssl_fingerprint": "F",
            "cpu": 0.5,
            "maxmem": 100,
            "mem": 10,
        }
        assert [sid for sid, _ in view.storage_rows()] == ["local"]
        assert view.reserved() == {150}

        store.delete(keys.guest(101))
        store.put(keys.guest(102), {**guest(102, hostname="c"), "lock": "backup"})
        store.delete(keys.node_alive("n1"))
        assert view.sync(timeout=10)
        assert list(rows(view)) == [102] and rows(view)[102]["lock"] == "backup"
        assert rows(view)[102]["name"] == "c" and view.nodes()[0]["status"] == "offline"
        assert view.stale_seconds() < 5
    finally:
        view.stop()


def test_rows_are_serialized_once_until_they_change() -> None:
    mem = MemoryStore(clock=VirtualClock())
    mem.put(keys.guest(101), guest(101))
    mem.put(keys.guest(102), guest(102))
    view = ClusterView(mem).start()
    first = dict(view.guest_rows())
    again = dict(view.guest_rows())
    assert first[101] is again[101] and first[102] is again[102]
    mem.put(keys.guest_status("n1", 102), {"status": "running"})
    assert view.sync()
    third = dict(view.guest_rows())
    assert third[101] is first[101] and third[102] is not first[102]


def test_view_rebuilds_after_compaction_and_ignores_replayed_history() -> None:
    clock = VirtualClock()
    mem = MemoryStore(clock=clock)
    mem.put(keys.guest(101), guest(101, hostname="old"))
    view = ClusterView(mem)
    view.start()
    mem.put(keys.guest(101), guest(101, hostname="new"))
    mem.put(keys.guest(103), guest(103))
    mem.compact(mem.revision())
    view.stop()
    # A view that starts from a compacted revision gets the whole state at once.
    late = ClusterView(mem)
    late.revision = 1
    late._watch = mem.watch("", late._on_event, start_revision=1)
    clock.run_pending()
    assert sorted(rows(late)) == [101, 103] and rows(late)[101]["name"] == "new"
    # A replayed put older than what the view holds changes nothing.
    late._apply(keys.GUESTS, keys.guest(101), guest(101, hostname="older"), 2)
    assert rows(late)[101]["name"] == "new"


def test_without_quorum_the_view_answers_and_says_it_is_stale() -> None:
    clock = VirtualClock()
    mem = MemoryStore(clock=clock)
    mem.put(keys.guest(101), guest(101))
    view = ClusterView(mem).start()
    assert view.sync()
    mem.set_quorate(False)
    clock.advance(3)
    assert not view.sync() and view.stale_seconds() == pytest.approx(3)
    assert list(rows(view)) == [101]
    mem.set_quorate(True)
    assert view.sync() and view.stale_seconds() == 0
