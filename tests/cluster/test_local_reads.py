"""Hot-path reads from the node's in-memory view: a request reads its own node's
writes at once (no etcd round trip), and a "no" is always confirmed on the store."""

from __future__ import annotations

from typing import Any

import pytest

from corral.cluster import keys
from corral.cluster.access import Access
from corral.cluster.clock import VirtualClock
from corral.cluster.cluster_view import ClusterView, local_value, local_values
from corral.cluster.errors import Forbidden, Unauthorized
from corral.cluster.store_api import WRITE_UNKNOWN, StoreAPI
from corral.cluster.store_memory import MemoryStore


class CountingStore(MemoryStore):
    """Counts the reads that reach the store."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.reads = 0

    def get(self, key: str) -> Any:
        self.reads += 1
        return super().get(key)


def _written_elsewhere(store: StoreAPI, key: str, value: Any) -> None:
    """A write by another node: in the store, but not one this process waits for, and
    not yet delivered to this node's watch (the virtual clock has not run)."""
    before = store.written_revision
    store.put(key, value)
    store.written_revision = before


def test_own_writes_are_read_from_memory_at_once(store: StoreAPI) -> None:
    view = ClusterView(store).start()
    services = {"cluster_view": view}
    try:
        for n in range(20):  # each write is seen by the very next read
            store.put(keys.guest(100 + n), {"vmid": 100 + n, "node": "n1", "n": n})
            assert local_value(services, store, keys.guest(100 + n))["n"] == n
            store.put("access/acl", [{"n": n}])
            assert local_value(services, store, "access/acl") == [{"n": n}]
        copy = local_value(services, store, keys.guest(100))
        copy["n"] = "changed"  # a copy: the view's record is untouched
        assert local_value(services, store, keys.guest(100))["n"] == 0
        store.put("access/pools/p1", {"poolid": "p1"})
        assert local_values(services, store, "access/pools/") == [{"poolid": "p1"}]
        # A write whose revision the store could not say: the view asks the store once.
        store.delete_prefix("access/pools/")
        store.written_revision = WRITE_UNKNOWN
        assert local_values(services, store, "access/pools/") == []
        assert store.written_revision > 0
    finally:
        view.stop()


def test_memory_reads_cost_no_store_read_and_fall_back_without_a_view() -> None:
    clock = VirtualClock()
    mem = CountingStore(clock=clock)
    view = ClusterView(mem).start()
    mem.put(keys.guest(101), {"vmid": 101, "node": "n1"})
    clock.run_pending()
    mem.reads = 0
    assert local_value({"cluster_view": view}, mem, keys.guest(101))["vmid"] == 101
    assert mem.reads == 0
    assert local_value({}, mem, keys.guest(101))["vmid"] == 101  # no view: the store
    assert mem.reads == 1
    mem.set_quorate(False)  # without quorum the view may be behind: the store says
    assert local_value({"cluster_view": view}, mem, keys.guest(101))["vmid"] == 101
    assert mem.reads == 2


def test_access_confirms_a_refusal_on_the_store() -> None:
    """A token or a grant made on another node a moment ago, not yet in this node's
    memory, is accepted: memory says yes, only the store may say no."""
    clock = VirtualClock()
    mem = CountingStore(clock=clock)
    view = ClusterView(mem).start()
    access = Access(mem, {"cluster_view": view})
    access.create_user("ops@pve", password="secret123")
    clock.run_pending()
    ident = access.verify_ticket(access.issue_ticket("ops@pve")[0])
    reads = mem.reads
    with access.request_scope():
        assert access.verify_ticket(access.issue_ticket("ops@pve")[0]) == "ops@pve"
    assert mem.reads == reads  # the user came from memory

    # A token made elsewhere: not in memory yet, accepted from the store.
    rec = mem.get_value("access/users/ops@pve")
    secret = "0123456789abcdef"
    from corral.cluster.access import _token_hash

    rec["tokens"] = {"ci": {"hash": _token_hash(secret), "privsep": 0}}
    _written_elsewhere(mem, "access/users/ops@pve", rec)
    with access.request_scope():
        assert access.verify_token(f"ops@pve!ci={secret}").name == "ops@pve!ci"
    with access.request_scope(), pytest.raises(Unauthorized):
        access.verify_token(f"ops@pve!ci=wrong{secret}")

    # A grant made elsewhere: the privilege check that memory refuses passes.
    _written_elsewhere(mem, "access/acl", [
        {"path": "/vms", "ugid": "ops@pve", "roleid": "PVEVMAdmin", "type": "user", "propagate": 1}
    ])  # fmt: skip
    with access.request_scope():
        access.check(ident_of(ident), "/vms/100", ["VM.PowerMgmt"])
        with pytest.raises(Forbidden):
            access.check(ident_of(ident), "/nodes/n1", ["Sys.Modify"])
    # A user removed elsewhere is gone once the watch delivers it.
    _written_elsewhere(mem, "access/users/ops@pve", {**rec, "enable": 0})
    clock.run_pending()
    with access.request_scope(), pytest.raises(Unauthorized, match="disabled"):
        access.verify_ticket(access.issue_ticket("ops@pve")[0])
    view.stop()


def ident_of(userid: str) -> Any:
    from corral.cluster.access import Identity

    return Identity(userid)


def test_a_storage_missing_from_memory_is_looked_up_in_the_store() -> None:
    from corral.cluster.errors import NotFound
    from corral.storage.volumes import Volumes

    made_elsewhere = {"local": {"type": "dir", "path": "/var/tmp", "content": "images"}}
    vols = Volumes(lambda: {}, node="n1", fresh=lambda: made_elsewhere)
    assert vols.config("local")["type"] == "dir"
    with pytest.raises(NotFound):
        vols.config("nosuch")
