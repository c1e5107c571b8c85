"""The state store in memory, with etcd's semantics, on a `Clock`.

For tests and the HA simulator: no etcd process, and on a `VirtualClock` no
threads - lease expiries and watch deliveries are callbacks of the clock, so
they happen in a fixed order when the test advances it. On the `RealClock` it
is thread-safe and behaves like a one-member etcd (watch callbacks then run
on timer threads, one at a time per watch).

What it keeps, as etcd does (see store_api for the contract): one revision
counter; per key create/mod revision and version; transactions; leases with
TTLs (minimum `min_lease_ttl`, etcd's is 2 s); a history of changes for
watches from an old revision, compacted by `compact()` or past `max_history`
events; quorum loss (`set_quorate(False)`: writes refuse, reads are stale).

Public API beyond StoreAPI (stable; the HA simulator builds on it):
`MemoryStore(clock=..., min_lease_ttl=2, max_history=...)`, `set_quorate()`,
`set_available()`, `leases()`, `compacted`.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from corral.cluster.clock import REAL, Clock
from corral.cluster.errors import NotQuorate, Unavailable
from corral.cluster.store_api import KV, Compare, Event, Op, StoreAPI

log = logging.getLogger(__name__)


@dataclass
class _Lease:
    ttl: int
    expires: float
    keys: set[str] = field(default_factory=set)


@dataclass
class _Raw:
    """A stored value, kept encoded like etcd keeps bytes."""

    data: bytes
    mod_revision: int
    create_revision: int
    version: int
    lease: int


def _decode(data: bytes) -> Any:
    return orjson.loads(data) if data else None


def _in(key: str, prefix: str) -> bool:
    return key.startswith(prefix)


class MemoryStore(StoreAPI):
    def __init__(
        self,
        *,
        clock: Clock = REAL,
        min_lease_ttl: int = 2,
        max_history: int = 100_000,
    ) -> None:
        self.clock = clock
        self.quorate: bool | None = True
        self.last_error: str | None = None
        self.min_lease_ttl = min_lease_ttl
        self.max_history = max_history
        self.compacted = 0  # history up to here is gone
        self._lock = threading.RLock()
        self._rev = 1  # an empty etcd is at revision 1
        self._data: dict[str, _Raw] = {}
        self._keys: list[str] = []  # sorted, for prefix ranges
        self._history: deque[tuple[int, str, str, bytes]] = deque()  # (rev, kind, key, data)
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x694D0000_00000001)
        self._watches: list[_MemoryWatch] = []
        self._available = True
        self._closed = False
        self._local = threading.local()

    # -- fault injection ------------------------------------------------------------
    def set_quorate(self, quorate: bool) -> None:
        """Without quorum writes fail with NotQuorate and reads are flagged stale."""
        self.quorate = quorate

    def set_available(self, available: bool) -> None:
        """Unavailable: every call fails with Unavailable, as an unreachable etcd."""
        self._available = available
        self.last_error = None if available else "store unavailable (simulated)"

    def leases(self) -> dict[int, float]:
        """Live lease id -> expiry (clock monotonic seconds)."""
        with self._lock:
            return {i: lease.expires for i, lease in self._leases.items()}

    # -- plumbing -------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise Unavailable("store is closed")
        if not self._available:
            raise Unavailable("cluster state store unavailable: store unavailable (simulated)")

    def _writable(self) -> None:
        self._check()
        if self.quorate is False:
            raise NotQuorate("cluster not quorate - writes are refused until quorum returns")

    def _read(self) -> None:
        self._check()
        if self.quorate is False:
            self._local.stale = True

    def _kv(self, key: str, raw: _Raw) -> KV:
        return KV(
            key, _decode(raw.data), raw.mod_revision, raw.create_revision, raw.version, raw.lease
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            watches, self._watches = self._watches, []
        for watch in watches:
            watch.cancel()

    # -- reading --------------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        with self._lock:
            self._read()
            raw = self._data.get(key)
            return None if raw is None else self._kv(key, raw)

    def _under(self, prefix: str) -> list[str]:
        start = bisect.bisect_left(self._keys, prefix)
        out = []
        for key in itertools.islice(self._keys, start, None):
            if not _in(key, prefix):
                break
            out.append(key)
        return out

    def range_rev(self, prefix: str, *, limit: int = 0) -> tuple[list[KV], int]:
        with self._lock:
            self._read()
            keys = self._under(prefix)
            if limit:
                keys = keys[:limit]
            return [self._kv(k, self._data[k]) for k in keys], self._rev

    def revision(self) -> int:
        with self._lock:
            self._check()
            if self.quorate is False:
                raise Unavailable("cluster state store unavailable: no quorum for a linear read")
            return self._rev

    # -- writing (callers hold the lock) --------------------------------------------
    def _put(self, rev: int, key: str, value: Any, lease: int | None) -> tuple[str, str, bytes]:
        data = orjson.dumps(value)
        if lease and lease not in self._leases:
            raise Unavailable(
                "cluster state store unavailable: etcd error: requested lease not found"
            )
        old = self._data.get(key)
        if old is None:
            bisect.insort(self._keys, key)
            raw = _Raw(data, rev, rev, 1, lease or 0)
        else:
            if old.lease and old.lease in self._leases:
                self._leases[old.lease].keys.discard(key)
            raw = _Raw(data, rev, old.create_revision, old.version + 1, lease or 0)
        if lease:
            self._leases[lease].keys.add(key)
        self._data[key] = raw
        return ("put", key, data)

    def _delete(self, key: str) -> tuple[str, str, bytes] | None:
        old = self._data.pop(key, None)
        if old is None:
            return None
        self._keys.pop(bisect.bisect_left(self._keys, key))
        if old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        return ("delete", key, b"")

    def _commit(self, changes: list[tuple[str, str, bytes]]) -> None:
        """Record one revision's changes and hand them to the watches."""
        rev = self._rev
        self.wrote(rev)
        for kind, key, data in changes:
            self._history.append((rev, kind, key, data))
        while len(self._history) > self.max_history:
            self.compacted = max(self.compacted, self._history.popleft()[0])
        for watch in self._watches:
            watch.offer(rev, changes)

    def _next(self) -> int:
        return self._rev + 1

    def put(self, key: str, value: Any, *, lease: int | None = None) -> int:
        with self._lock:
            self._writable()
            change = self._put(self._next(), key, value, lease)
            self._rev += 1
            self._commit([change])
            return self._rev

    def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        if mod_revision is not None:
            return self.txn([("mod", key, "==", mod_revision)], [("delete", key)])
        with self._lock:
            self._writable()
            change = self._delete(key)
            if change is None:
                return False
            self._rev += 1
            self._commit([change])
            return True

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            self._writable()
            changes = [c for k in self._under(prefix) if (c := self._delete(k))]
            if changes:
                self._rev += 1
                self._commit(changes)
            return len(changes)

    def _compare(self, item: Compare) -> bool:
        kind, key, op, operand = item
        raw = self._data.get(key)
        if kind == "value":
            if raw is None:
                return False  # as etcd: a value compare on a missing key fails
            actual: Any = raw.data
            operand = orjson.dumps(operand)
        elif kind == "version":
            actual = raw.version if raw else 0
        elif kind == "mod":
            actual = raw.mod_revision if raw else 0
        elif kind == "create":
            actual = raw.create_revision if raw else 0
        else:
            raise ValueError(f"unknown compare target {kind}")
        if op == "==":
            return bool(actual == operand)
        if op == "!=":
            return bool(actual != operand)
        if op == "<":
            return bool(actual < operand)
        if op == ">":
            return bool(actual > operand)
        raise ValueError(f"unknown compare operator {op}")

    def txn(
        self, compare: list[Compare], success: list[Op], failure: list[Op] | None = None
    ) -> bool:
        return self._txn(compare, success, failure) != 0

    def txn_revision(self, compare: list[Compare], success: list[Op]) -> int:
        return self._txn(compare, success, None)

    def _txn(self, compare: list[Compare], success: list[Op], failure: list[Op] | None) -> int:
        """0 when a compare failed, else the revision written (-1: nothing written)."""
        with self._lock:
            self._writable()
            ok = all(self._compare(c) for c in compare)
            ops = success if ok else (failure or [])
            rev = self._next()
            # Check leases first, so a bad op changes nothing (a txn is atomic).
            for item in ops:
                if item[0] == "put" and len(item) > 3 and item[3] and item[3] not in self._leases:
                    raise Unavailable(
                        "cluster state store unavailable: etcd error: requested lease not found"
                    )
            changes: list[tuple[str, str, bytes]] = []
            for item in ops:
                if item[0] == "put":
                    changes.append(
                        self._put(rev, item[1], item[2], item[3] if len(item) > 3 else None)
                    )
                elif item[0] == "delete":
                    if change := self._delete(item[1]):
                        changes.append(change)
                elif item[0] == "delete_prefix":
                    changes.extend(c for k in self._under(item[1]) if (c := self._delete(k)))
                else:
                    raise ValueError(f"unknown txn op {item[0]}")
            if changes:
                self._rev = rev
                self._commit(changes)
            if not ok:
                return 0
            return rev if changes else -1

    def compact(self, revision: int) -> None:
        with self._lock:
            self._check()
            revision = min(revision, self._rev)
            while self._history and self._history[0][0] <= revision:
                self._history.popleft()
            self.compacted = max(self.compacted, revision)

    # -- leases ---------------------------------------------------------------------
    def lease_grant(self, ttl: int) -> int:
        with self._lock:
            self._writable()
            ttl = max(int(ttl), self.min_lease_ttl)
            lease_id = next(self._lease_ids)
            self._leases[lease_id] = _Lease(ttl, self.clock.monotonic() + ttl)
        self.clock.call_later(ttl, lambda: self._expire(lease_id))
        return lease_id

    def _expire(self, lease_id: int) -> None:
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None or self._closed:
                return
            left = lease.expires - self.clock.monotonic()
            if left > 0:  # renewed meanwhile: look again when it may be due
                self.clock.call_later(left, lambda: self._expire(lease_id))
                return
            self._revoke_locked(lease_id)

    def _revoke_locked(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        changes = [c for k in sorted(lease.keys) if (c := self._delete(k))]
        if changes:
            self._rev += 1
            self._commit(changes)

    def lease_refresh(self, lease_id: int) -> int:
        with self._lock:
            self._check()
            if self.quorate is False:
                raise Unavailable("cluster state store unavailable: no quorum to renew a lease")
            lease = self._leases.get(lease_id)
            if lease is None:
                return 0
            lease.expires = self.clock.monotonic() + lease.ttl
            return lease.ttl

    def lease_revoke(self, lease_id: int) -> None:
        with self._lock:
            if self._closed or not self._available or self.quorate is False:
                return  # as etcd's store: never raises; the lease then expires
            self._revoke_locked(lease_id)

    # -- watches --------------------------------------------------------------------
    def watch(
        self, prefix: str, callback: Callable[[Event], None], *, start_revision: int | None = None
    ) -> _MemoryWatch:
        with self._lock:
            self._check()
            start = self._rev if start_revision is None else start_revision
            watch = _MemoryWatch(self, prefix, callback, start)
            if start < self.compacted:
                kvs = [self._kv(k, self._data[k]) for k in self._under(prefix)]
                watch.queue_event(Event("resync", prefix, kvs, self._rev))
            else:
                for rev, kind, key, data in self._history:
                    if rev > start and _in(key, prefix):
                        watch.queue_event(
                            Event(kind, key, _decode(data) if kind == "put" else None, rev)
                        )
            self._watches.append(watch)
            return watch


class _MemoryWatch:
    """Delivers one watch's events in order, one callback at a time, on the clock."""

    def __init__(
        self, store: MemoryStore, prefix: str, callback: Callable[[Event], None], start: int
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.callback = callback
        self.revision: int | None = start
        self._events: deque[Event] = deque()
        self._scheduled = False
        self._cancelled = False
        self._guard = threading.Lock()

    def offer(self, rev: int, changes: list[tuple[str, str, bytes]]) -> None:
        for kind, key, data in changes:
            if _in(key, self.prefix):
                self.queue_event(Event(kind, key, _decode(data) if kind == "put" else None, rev))

    def queue_event(self, event: Event) -> None:
        with self._guard:
            if self._cancelled:
                return
            self._events.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        self.store.clock.call_soon(self._drain)

    def _drain(self) -> None:
        while True:
            with self._guard:
                if self._cancelled or not self._events:
                    self._scheduled = False
                    return
                event = self._events.popleft()
            self.revision = event.revision
            try:
                self.callback(event)
            except Exception:  # noqa: BLE001 - a bad consumer must not kill the watch
                log.exception("watch callback failed for %s", self.prefix)

    def cancel(self) -> None:
        with self._guard:
            self._cancelled = True
            self._events.clear()
        with self.store._lock:
            if self in self.store._watches:
                self.store._watches.remove(self)
