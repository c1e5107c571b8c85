"""The store against a real etcd: CAS, races, watches that survive failures, leases, locks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from corral.cluster.errors import Conflict, Unavailable
from corral.cluster.etcd_embed import EmbeddedEtcd
from corral.cluster.store import Event, Store
from tests.util import free_ports, wait_for


def test_put_get_range_delete(store: Store) -> None:
    store.put("a/1", {"x": 1})
    store.put("a/2", [1, 2])
    store.put("b/1", "other")
    assert store.get_value("a/1") == {"x": 1}
    assert [kv.key for kv in store.range("a/")] == ["a/1", "a/2"]
    assert store.get("missing") is None
    assert store.delete("a/1") is True
    assert store.delete("a/1") is False
    assert store.delete_prefix("a/") == 1


def test_range_limit_and_revision(store: Store) -> None:
    for i in range(5):
        store.put(f"r/{i}", i)
    kvs, rev = store.range_rev("r/", limit=2)
    assert [kv.value for kv in kvs] == [0, 1]
    assert rev >= kvs[-1].mod_revision
    assert store.revision() >= rev


def test_compare_and_swap(store: Store) -> None:
    assert store.create("k", 1)
    assert not store.create("k", 2)
    kv = store.get("k")
    assert kv is not None
    assert store.replace("k", 3, mod_revision=kv.mod_revision)
    assert not store.replace("k", 4, mod_revision=kv.mod_revision)  # stale revision loses
    assert store.get_value("k") == 3
    assert not store.delete("k", mod_revision=kv.mod_revision)
    assert store.delete("k", mod_revision=store.get("k").mod_revision)  # type: ignore[union-attr]


def test_concurrent_creates_exactly_one_wins(store: Store) -> None:
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


def test_update_retries_under_contention(store: Store) -> None:
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


def test_watch_sees_puts_and_deletes_in_order(store: Store) -> None:
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


def test_watch_from_revision_replays_history(store: Store) -> None:
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


def test_watch_resyncs_after_compaction(store: Store) -> None:
    store.put("c/keep", "v1")
    _, old_rev = store.range_rev("c/")
    store.put("c/keep", "v2")
    store.put("c/new", "n")
    current = store.revision()
    store.call(lambda c: c.compact(current))
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


def test_kept_lease_lives_and_revoke_removes_keys(store: Store) -> None:
    lease = store.keep_lease(2)
    store.put("l/alive", 1, lease=lease.id)
    time.sleep(3)  # longer than the TTL: only renewal keeps it
    assert store.get("l/alive") is not None
    lease.revoke()
    assert store.get("l/alive") is None


def test_unrenewed_lease_expires(store: Store) -> None:
    lease_id = store.lease_grant(2)
    store.put("l/gone", 1, lease=lease_id)
    wait_for(lambda: store.get("l/gone") is None, 10, 0.2, what="lease expiry")


def test_lock_is_mutually_exclusive(store: Store) -> None:
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
