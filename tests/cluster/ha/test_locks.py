"""The HA lease locks and the CRM's guarded writes on etcd and on the in-memory store."""

from __future__ import annotations

import time

from corral.cluster.ha.env import MANAGER_LOCK, MANAGER_STATUS, LeaseLock
from corral.cluster.store_api import StoreAPI


def test_one_holder_and_takeover_after_expiry(store: StoreAPI) -> None:
    a = LeaseLock(store, MANAGER_LOCK, "node1", 2)  # type: ignore[arg-type]
    b = LeaseLock(store, MANAGER_LOCK, "node2", 2)  # type: ignore[arg-type]
    assert a.hold()
    assert not b.hold()
    assert a.hold()  # renewal
    deadline = time.monotonic() + 10
    while not b.hold():  # a stops renewing: its lease runs out
        assert time.monotonic() < deadline, "lease never expired"
        time.sleep(0.2)
    assert not a.hold()
    assert store.get_value(MANAGER_LOCK)["node"] == "node2"
    b.release()
    assert store.get(MANAGER_LOCK) is None


def test_writes_guarded_by_the_lock_fail_once_it_is_lost(store: StoreAPI) -> None:
    a = LeaseLock(store, MANAGER_LOCK, "node1", 2)  # type: ignore[arg-type]
    assert a.hold()
    assert store.txn([a.compare()], [("put", MANAGER_STATUS, {"master_node": "node1"})])
    a.release()
    b = LeaseLock(store, MANAGER_LOCK, "node2", 2)  # type: ignore[arg-type]
    assert b.hold()
    # node1 still thinks it is master: its write must not land
    assert not store.txn([a.compare()], [("put", MANAGER_STATUS, {"master_node": "node1"})])
    assert store.get_value(MANAGER_STATUS) == {"master_node": "node1"}
    b.release()
