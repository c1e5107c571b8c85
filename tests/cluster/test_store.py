"""The store contract, on etcd and in memory: CAS, races, watches, compaction, leases, locks.

Tests that take `store` run on both stores; the etcd-only ones (restarts,
unreachable or frozen etcd) build their own; the virtual-clock ones at the end
run the in-memory store with no threads and no sleeping.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cluster.clock import VirtualClock
from corral.cluster.errors import Conflict, NotQuorate, Unavailable
from corral.cluster.etcd_embed import EmbeddedEtcd
from corral.cluster.store import Store
from corral.cluster.store_api import Event, StoreAPI
from corral.cluster.store_memory import MemoryStore
from tests.util import free_ports, wait_for


def test_put_get_range_delete(store: StoreAPI) -> None:
    store.put("a/1", {"x": 1})
    store.put("a/2", [1, 2])
    store.put("b/1", "other")
    assert store.get_value("a/1") == {"x": 1}
    assert [kv.key for kv in store.range("a/")] == ["a/1", "a/2"]
    assert store.get("missing") is None
    assert store.delete("a/1") is True
    assert store.delete("a/1") is False
    assert store.delete_prefix("a/") == 1


def test_range_limit_and_revision(store: StoreAPI) -> None:
    for i in range(5):
        store.put(f"r/{i}", i)
    kvs, rev = store.range_rev("r/", limit=2)
    assert [kv.value for kv in kvs] == [0, 1]
    assert rev >= kvs[-1].mod_revision
    assert store.revision() >= rev


def test_compare_and_swap(store: StoreAPI) -> None:
    assert store.create("k", 1)
    assert not store.create("k", 2)
    kv = store.get("k")
    assert kv is not None
    assert store.replace("k", 3, mod_revision=kv.mod_revision)
    assert not store.replace("k", 4, mod_revision=kv.mod_revision)  # stale revision loses
    assert store.get_value("k") == 3
    assert not store.delete("k", mod_revision=kv.mod_revision)
    assert store.delete("k", mod_revision=store.get("k").mod_revision)  # type: ignore[union-attr]


def test_concurrent_creates_exactly_one_wins(store: StoreAPI) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        results.append(store.create("race", i))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_update_retries_under_contention(store: StoreAPI) -> None:
    store.put("counter", 0)

    def bump() -> None:
        for _ in range(10):
            store.update("counter", lambda v: v + 1)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_value("counter") == 40


def test_update_from_a_known_copy_skips_the_read_and_survives_a_stale_one(
    store: StoreAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("rec", {"n": 1, "lock": None})
    kv = store.get("rec")
    assert kv is not None
    reads: list[str] = []
    real_get = store.get
    monkeypatch.setattr(store, "get", lambda key: reads.append(key) or real_get(key))

    def bump(v: dict[str, Any]) -> dict[str, Any]:
        return {**v, "n": v["n"] + 1}

    # A current copy: one compare-and-swap, no read.
    assert store.update("rec", bump, known=(kv.mod_revision, kv.value)) == {"n": 2, "lock": None}
    assert reads == []
    # The same copy is stale now: its compare fails, the retry reads and lands.
    assert store.update("rec", bump, known=(kv.mod_revision, kv.value))["n"] == 3
    assert reads == ["rec"]

    def take_lock(v: dict[str, Any]) -> dict[str, Any]:
        if v["lock"]:
            raise Conflict(f"locked ({v['lock']})")
        return {**v, "lock": "destroyed"}

    # A refusal said from a stale copy is asked again of the store, which has no lock.
    assert (
        store.update("rec", take_lock, known=(kv.mod_revision, {"n": 1, "lock": "old"}))["lock"]
        == "destroyed"
    )
    # One the store confirms stands, and nothing is written.
    before = store.get("rec")
    with pytest.raises(Conflict, match="destroyed"):
        store.update("rec", take_lock, known=(0, {"n": 0, "lock": None}))
    assert store.get("rec") == before


def test_watch_sees_puts_and_deletes_in_order(store: StoreAPI) -> None:
    events: list[Event] = []
    watch = store.watch("w/", events.append)
    try:
        time.sleep(0.2)
        store.put("w/a", 1)
        store.put("w/b", 2)
        store.delete("w/a")
        store.put("other", 3)
        wait_for(lambda: len(events) >= 3, 10, what="3 events")
        assert [(e.kind, e.key, e.value) for e in events] == [
            ("put", "w/a", 1),
            ("put", "w/b", 2),
            ("delete", "w/a", None),
        ]
    finally:
        watch.cancel()


def test_watch_from_revision_replays_history(store: StoreAPI) -> None:
    _, rev = store.range_rev("h/")
    store.put("h/1", "one")
    store.put("h/2", "two")
    events: list[Event] = []
    watch = store.watch("h/", events.append, start_revision=rev)
    try:
        wait_for(lambda: len(events) == 2, 10, what="replayed events")
        assert [e.value for e in events] == ["one", "two"]
    finally:
        watch.cancel()


@pytest.fixture
def private_etcd(tmp_path: Path) -> EmbeddedEtcd:
    server = EmbeddedEtcd(tmp_path / "etcd", name="w", client_port=free_ports(2))
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def test_watch_resumes_after_etcd_restart(private_etcd: EmbeddedEtcd) -> None:
    store = Store([private_etcd.endpoint], timeout=2)
    events: list[Event] = []
    watch = store.watch("x/", events.append)
    try:
        time.sleep(0.2)
        store.put("x/before", 1)
        wait_for(lambda: len(events) == 1, 10, what="first event")
        private_etcd.proc.kill()  # type: ignore[union-attr]
        private_etcd.proc.wait()  # type: ignore[union-attr]
        with pytest.raises(Unavailable):
            store.put("x/during", 2)
        # The supervisor restarts etcd; the watch must pick up where it was.
        wait_for(lambda: store.put("x/after", 3), 20, 0.2, what="etcd back")
        wait_for(lambda: any(e.key == "x/after" for e in events), 20, what="event after restart")
        assert [e.key for e in events if e.kind == "put"] == ["x/before", "x/after"]
        assert private_etcd.restarts == 1
    finally:
        watch.cancel()
        store.close()


def test_watch_resyncs_after_compaction(store: StoreAPI) -> None:
    store.put("c/keep", "v1")
    _, old_rev = store.range_rev("c/")
    store.put("c/keep", "v2")
    store.put("c/new", "n")
    current = store.revision()
    store.compact(current)
    events: list[Event] = []
    watch = store.watch("c/", events.append, start_revision=old_rev)
    try:
        wait_for(lambda: events, 10, what="resync event")
        assert events[0].kind == "resync"
        assert {kv.key: kv.value for kv in events[0].value} == {"c/keep": "v2", "c/new": "n"}
        store.put("c/later", 1)
        wait_for(lambda: any(e.key == "c/later" for e in events), 10, what="event after resync")
    finally:
        watch.cancel()


def test_kept_lease_lives_and_revoke_removes_keys(store: StoreAPI) -> None:
    lease = store.keep_lease(2)
    store.put("l/alive", 1, lease=lease.id)
    time.sleep(3)  # longer than the TTL: only renewal keeps it
    assert store.get("l/alive") is not None
    lease.revoke()
    assert store.get("l/alive") is None


def test_unrenewed_lease_expires(store: StoreAPI) -> None:
    lease_id = store.lease_grant(2)
    store.put("l/gone", 1, lease=lease_id)
    wait_for(lambda: store.get("l/gone") is None, 10, 0.2, what="lease expiry")


def test_lock_is_mutually_exclusive(store: StoreAPI) -> None:
    inside = []
    overlap = []

    def worker(i: int) -> None:
        with store.lock("m", ttl=5, timeout=30):
            inside.append(i)
            if len(inside) > 1:
                overlap.append(i)
            time.sleep(0.05)
            inside.remove(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlap == []
    with store.lock("m2"), pytest.raises(Conflict, match="can't lock"):
        with store.lock("m2", timeout=0.3):
            pass


def test_unreachable_etcd_fails_fast_with_reason() -> None:
    store = Store([f"http://127.0.0.1:{free_ports(1)}"], timeout=1)
    try:
        start = time.monotonic()
        with pytest.raises(Unavailable, match="cluster state store unavailable"):
            store.get("x")
        assert time.monotonic() - start < 5
    finally:
        store.close()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_stopped_etcd_times_out_instead_of_hanging(private_etcd: EmbeddedEtcd) -> None:
    store = Store([private_etcd.endpoint], timeout=1)
    try:
        store.put("s", 1)
        private_etcd.proc.send_signal(19)  # type: ignore[union-attr]  # SIGSTOP: accepts, never answers
        pid = private_etcd.proc.pid  # type: ignore[union-attr]
        # The stop lands asynchronously: on a busy machine etcd could still answer one more.
        wait_for(lambda: _state(pid) == "T", 5, 0.01, what="etcd stopped")
        start = time.monotonic()
        with pytest.raises(Unavailable):
            store.get("s")
        assert time.monotonic() - start < 5
    finally:
        private_etcd.proc.send_signal(18)  # type: ignore[union-attr]  # SIGCONT
        store.close()


# -- the in-memory store on a virtual clock: deterministic, no threads, no sleeping --------


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def vstore(vclock: VirtualClock) -> Iterator[MemoryStore]:
    threads = threading.active_count()
    mem = MemoryStore(clock=vclock)
    yield mem
    mem.close()
    assert threading.active_count() == threads  # nothing ran on a thread of its own
    assert vclock.errors == []


def test_virtual_lease_expires_exactly_at_its_ttl(
    vclock: VirtualClock, vstore: MemoryStore
) -> None:
    events: list[Event] = []
    vstore.watch("l/", events.append)
    lease = vstore.lease_grant(5)
    vstore.put("l/a", 1, lease=lease)
    vstore.put("l/b", 2, lease=lease)
    vclock.advance(4.9)
    assert vstore.get("l/a") is not None
    assert vstore.lease_refresh(lease) == 5  # renewed at 4.9: now lives until 9.9
    vclock.advance(4.9)
    assert vstore.get("l/a") is not None
    vclock.advance(0.2)
    assert vstore.range("l/") == [] and vstore.lease_refresh(lease) == 0
    deletes = [e for e in events if e.kind == "delete"]
    assert [e.key for e in deletes] == ["l/a", "l/b"]
    assert deletes[0].revision == deletes[1].revision  # one revision, as etcd's lease revoke
    assert vstore.lease_grant(1) and max(vstore.leases().values()) == vclock.monotonic() + 2


def test_virtual_kept_lease_lives_and_is_lost_without_quorum(
    vclock: VirtualClock, vstore: MemoryStore
) -> None:
    lost: list[bool] = []
    kept = vstore.keep_lease(3, on_lost=lambda: lost.append(True))
    vstore.put("k/alive", 1, lease=kept.id)
    vclock.advance(60)
    assert vstore.get_value("k/alive") == 1 and not kept.lost
    vstore.set_quorate(False)  # renewals fail from now on
    vclock.advance(2.9)
    assert not lost
    vclock.advance(1.2)
    assert lost == [True] and kept.lost
    vstore.set_quorate(True)
    assert vstore.get("k/alive") is None  # the store expired it meanwhile
    kept.revoke()
    other = vstore.keep_lease(3)
    vstore.put("k/other", 1, lease=other.id)
    other.revoke()
    assert vstore.get("k/other") is None and vclock.pending() <= 1


def test_virtual_watch_delivers_in_revision_order_when_the_clock_runs(
    vclock: VirtualClock, vstore: MemoryStore
) -> None:
    events: list[Event] = []
    start = vstore.revision()
    vstore.put("w/a", 1)
    watch = vstore.watch("w/", events.append, start_revision=start)  # replays w/a
    vstore.put("w/b", 2)
    vstore.txn([("version", "w/a", "==", 1)], [("put", "w/c", 3), ("delete", "w/a")])
    vstore.put("x/other", 0)
    assert events == []  # nothing runs until the clock does
    vclock.run_pending()
    assert [(e.kind, e.key, e.value) for e in events] == [
        ("put", "w/a", 1),
        ("put", "w/b", 2),
        ("put", "w/c", 3),
        ("delete", "w/a", None),
    ]
    revs = [e.revision for e in events]
    assert revs == sorted(revs) and revs[2] == revs[3] and watch.revision == revs[-1]
    watch.cancel()
    vstore.put("w/d", 4)
    vclock.run_pending()
    assert len(events) == 4


def test_virtual_watch_resyncs_after_compaction_and_history_limit(vclock: VirtualClock) -> None:
    mem = MemoryStore(clock=vclock, max_history=3)
    old = mem.revision()
    for i in range(5):
        mem.put(f"c/{i}", i)
    events: list[Event] = []
    mem.watch("c/", events.append, start_revision=old)
    mem.put("c/later", "x")
    vclock.run_pending()
    assert events[0].kind == "resync" and [kv.key for kv in events[0].value] == [
        f"c/{i}" for i in range(5)
    ]
    assert [(e.kind, e.key) for e in events[1:]] == [("put", "c/later")]


def test_virtual_txn_semantics(vstore: MemoryStore) -> None:
    assert not vstore.txn([("value", "t/missing", "==", None)], [("put", "t/x", 1)])
    assert vstore.get("t/x") is None
    rev = vstore.revision()
    assert not vstore.txn([("version", "t/y", ">", 0)], [], [("put", "t/y", 1), ("put", "t/z", 2)])
    y, z = vstore.get("t/y"), vstore.get("t/z")
    assert y and z and y.mod_revision == z.mod_revision == rev + 1 and y.version == 1
    assert vstore.txn([("value", "t/y", "==", 1), ("create", "t/y", "==", rev + 1)], [])
    assert vstore.revision() == rev + 1  # a txn that writes nothing makes no revision
    vstore.put("t/y", 5)
    kv = vstore.get("t/y")
    assert kv and kv.version == 2 and kv.create_revision == rev + 1
    assert vstore.delete("t/nothing") is False and vstore.revision() == rev + 2
    with pytest.raises(Unavailable, match="lease not found"):
        vstore.txn([], [("put", "t/a", 1), ("put", "t/b", 1, 12345)])
    assert vstore.get("t/a") is None  # atomic: nothing of a failed txn is written


def test_virtual_quorum_loss_refuses_writes_and_flags_reads(vstore: MemoryStore) -> None:
    vstore.put("q", 1)
    vstore.set_quorate(False)
    vstore.reset_stale()
    with pytest.raises(NotQuorate):
        vstore.put("q", 2)
    assert vstore.get_value("q") == 1 and vstore.last_read_stale
    vstore.set_quorate(True)
    vstore.set_available(False)
    with pytest.raises(Unavailable):
        vstore.get("q")


def test_virtual_lock_waits_for_a_dead_holders_lease(
    vclock: VirtualClock, vstore: MemoryStore
) -> None:
    dead = vstore.lease_grant(7)  # a holder that died: nobody renews it
    assert vstore.create("locks/m", {"token": "dead"}, lease=dead)
    with pytest.raises(Conflict, match="can't lock"):
        with vstore.lock("m", timeout=3):
            pass
    assert vclock.monotonic() == pytest.approx(1003.05, abs=0.06)
    with vstore.lock("m", ttl=5, timeout=30):  # the clock runs while it polls: the lease expires
        assert vclock.monotonic() >= 1007
        assert vstore.get_value("locks/m")["token"] != "dead"
    assert vstore.get("locks/m") is None


def _scenario() -> list[tuple[str, str, int]]:
    clock = VirtualClock()
    mem = MemoryStore(clock=clock)
    seen: list[tuple[str, str, int]] = []
    mem.watch("", lambda e: seen.append((e.kind, e.key, e.revision)))
    for i in range(3):
        lease = mem.lease_grant(2 + i)
        mem.put(f"n/{i}", i, lease=lease)
        clock.call_later(i * 0.5, lambda i=i: mem.put(f"t/{i}", i))
    clock.advance(10)
    return seen


def test_virtual_runs_are_identical() -> None:
    first = _scenario()
    assert first == _scenario() and len(first) == 9


def test_txn_revision_says_what_it_wrote(store: StoreAPI) -> None:
    """Both stores: the new mod revision of the first key put, 0 when a compare fails."""
    first = store.put("tr/a", 1)
    rev = store.txn_revision(
        [("mod", "tr/a", "==", first)], [("put", "tr/a", 2), ("put", "tr/b", 3)]
    )
    kv = store.get("tr/a")
    assert kv is not None and rev == kv.mod_revision > first and kv.value == 2
    assert store.txn_revision([("mod", "tr/a", "==", first)], [("put", "tr/a", 9)]) == 0
    assert store.get_value("tr/a") == 2
    assert store.txn_revision([("mod", "tr/a", "==", rev)], [("put", "tr/a", 4)]) > rev


def test_a_call_racing_a_dropped_channel_dials_anew_not_an_error(
    etcd: EmbeddedEtcd,
) -> None:
    """A failed call closes the shared channel while other threads hold its stubs
    (their calls in flight fail at once, not each after its own timeout). A call
    that begins on it just then is refused by gRPC before anything is sent, with a
    ValueError ("Cannot invoke RPC on closed channel!" or "Cannot invoke RPC:
    Channel closed!", by version and path); the API answered 500 for it (soaks with
    kill -9 of etcd saw 17, then 2). It is made once more on a fresh channel; if
    that one is closed under it too, the store is unavailable (HTTP 503)."""
    store = Store([etcd.endpoint], prefix=f"/corral-test/{uuid.uuid4().hex}/", timeout=5)
    real = store._channel.stubs
    races = [0]

    def racing(endpoint: str) -> Any:
        out = real(endpoint)
        if races[0] > 0:
            races[0] -= 1
            store._channel.drop(out[2])  # another thread's failure, just after we got them
        return out

    try:
        store.put("k", 1)
        store._channel.stubs = racing  # type: ignore[method-assign]
        races[0] = 1
        assert store.get_value("k") == 1  # dialled anew
        races[0] = 1
        store.put("k", 2)  # a write too: the refused call sent nothing
        assert store.get_value("k") == 2
        races[0] = 2
        with pytest.raises(Unavailable, match="channel was closed"):
            store.get("k")
        assert races[0] == 0
        assert store.get_value("k") == 2  # and the next call answers
    finally:
        store._channel.stubs = real  # type: ignore[method-assign]
        store.delete_prefix("")
        store.close()
