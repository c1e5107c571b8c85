"""What the cluster code may ask of its state store, and what both stores share.

Two implementations, one contract (tests/cluster/test_store.py runs it against
both):

- `corral.cluster.store.Store`: etcd through aetcd (the daemon's store).
- `corral.cluster.store_memory.MemoryStore`: in memory, on a `Clock`, with the
  same revisions, compares, leases, watches and compaction - for tests and the
  HA simulator, with no etcd process and, on a `VirtualClock`, no threads.

Semantics both keep (those of etcd v3):
- one store-wide revision; every write (a put, a delete that removed
  something, a transaction with writes) makes exactly one new revision; each
  key has create_revision, mod_revision and version (puts since created);
- a transaction compares then runs its success or failure ops atomically; a
  "value" compare on a missing key is false;
- keys put under a lease vanish when it is revoked or expires (TTL counted on
  the store's clock, renewed by `lease_refresh`/`keep_lease`);
- a watch delivers the changes under a prefix after a start revision, in
  revision order, from one thread (or clock callback) at a time; when that
  revision has been compacted away it delivers one "resync" event holding the
  whole current range, then continues live.

Values are JSON (encoded on write, decoded on read: a reader never shares an
object with a writer).
"""

from __future__ import annotations

import abc
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from corral.cluster.clock import Clock, Timer
from corral.cluster.errors import Conflict, CorralError, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KV:
    key: str
    value: Any
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    """A change seen by a watch. `kind` is "put", "delete" or "resync".

    "resync" means events were lost (compaction): `value` then holds the
    complete current list of KVs under the watched prefix.
    """

    kind: str
    key: str
    value: Any
    revision: int


WRITE_UNKNOWN = -1

# compare: ("version"|"mod"|"create"|"value", key, "=="|"!="|"<"|">", operand)
Compare = tuple[Any, ...]
# op: ("put", key, value[, lease]) | ("delete", key) | ("delete_prefix", prefix)
Op = tuple[Any, ...]


class WatchHandle(Protocol):
    revision: int | None  # the last revision delivered

    def cancel(self) -> None: ...


class LeaseHandle(Protocol):
    id: int
    lost: bool

    def revoke(self) -> None: ...


class StoreAPI(abc.ABC):
    """The state store as the cluster code uses it. Keys are relative strings."""

    clock: Clock
    # Quorum and staleness: without quorum, writes fail at once with NotQuorate
    # and reads are served locally and flagged stale (see last_read_stale).
    quorate: bool | None
    last_error: str | None
    # The newest revision a write through this store object made (read-your-writes for
    # in-memory views: see ClusterView.caught_up); WRITE_UNKNOWN after a write whose
    # revision the store could not say (the next caught_up() asks the store once).
    written_revision: int = 0
    _written_lock = threading.Lock()

    def wrote(self, revision: int) -> None:
        """Note a write of this process at `revision` (WRITE_UNKNOWN: unknown)."""
        with self._written_lock:
            if revision == WRITE_UNKNOWN or self.written_revision == WRITE_UNKNOWN:
                self.written_revision = WRITE_UNKNOWN
            elif revision > self.written_revision:
                self.written_revision = revision

    def settle_written(self, revision: int) -> None:
        """An unknown write's revision is now known to be at most `revision`."""
        with self._written_lock:
            if self.written_revision == WRITE_UNKNOWN:
                self.written_revision = revision

    # -- key/value ------------------------------------------------------------------
    @abc.abstractmethod
    def get(self, key: str) -> KV | None: ...

    def get_value(self, key: str, default: Any = None) -> Any:
        kv = self.get(key)
        return default if kv is None else kv.value

    def range(self, prefix: str, *, limit: int = 0) -> list[KV]:
        return self.range_rev(prefix, limit=limit)[0]

    @abc.abstractmethod
    def range_rev(self, prefix: str, *, limit: int = 0) -> tuple[list[KV], int]:
        """Every KV under `prefix` (sorted by key) and the store revision of the read."""

    @abc.abstractmethod
    def put(self, key: str, value: Any, *, lease: int | None = None) -> int:
        """Write; returns the new store revision."""

    def create(self, key: str, value: Any, *, lease: int | None = None) -> bool:
        """Create-if-absent; False when the key already exists."""
        return self.txn([("version", key, "==", 0)], [("put", key, value, lease)])

    def replace(self, key: str, value: Any, *, mod_revision: int, lease: int | None = None) -> bool:
        """Compare-and-swap on the key's revision (0 means: must not exist)."""
        return self.txn([("mod", key, "==", mod_revision)], [("put", key, value, lease)])

    @abc.abstractmethod
    def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        """True when the key existed (and had `mod_revision`, when given)."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """How many keys were deleted."""

    @abc.abstractmethod
    def txn(
        self, compare: list[Compare], success: list[Op], failure: list[Op] | None = None
    ) -> bool:
        """One atomic transaction; True when every compare held (success ran)."""

    def txn_revision(self, compare: list[Compare], success: list[Op]) -> int:
        """txn() that also says the revision it wrote: 0 when a compare failed, else
        the new mod revision of the first key `success` puts (-1: not known), so a
        caller that keeps writing one key needs no read to learn its revision."""
        return -1 if self.txn(compare, success) else 0

    def update(
        self,
        key: str,
        fn: Callable[[Any], Any],
        *,
        retries: int = 20,
        known: tuple[int, Any] | None = None,
    ) -> Any:
        """Read-modify-write with CAS, retried on concurrent change. `known`: the
        key's (mod_revision, value) as the caller holds it (a copy from the node's
        view, for `fn` to change): the first attempt uses it without a read. A stale
        copy only fails the compare, and a refusal `fn` raises on it is confirmed
        on a value read from the store."""
        for attempt in range(retries):
            if attempt == 0 and known is not None:
                revision, value = known
            else:
                kv = self.get(key)
                revision, value = (0, None) if kv is None else (kv.mod_revision, kv.value)
            try:
                new = fn(value)
            except CorralError:
                if attempt == 0 and known is not None:
                    continue
                raise
            if self.replace(key, new, mod_revision=revision):
                return new
        raise Conflict(f"too much contention on {key}")

    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision (a quorum read: it fails without quorum)."""

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Forget history up to `revision`: watches from before it resync."""

    # -- leases ---------------------------------------------------------------------
    @abc.abstractmethod
    def lease_grant(self, ttl: int) -> int: ...

    @abc.abstractmethod
    def lease_refresh(self, lease_id: int) -> int:
        """Renew; returns the TTL granted, 0 when the lease has expired."""

    @abc.abstractmethod
    def lease_revoke(self, lease_id: int) -> None:
        """Drop the lease and its keys (never raises)."""

    def keep_lease(self, ttl: int, *, on_lost: Callable[[], None] | None = None) -> KeptLease:
        return KeptLease(self, ttl, on_lost=on_lost)

    # -- watches --------------------------------------------------------------------
    @abc.abstractmethod
    def watch(
        self, prefix: str, callback: Callable[[Event], None], *, start_revision: int | None = None
    ) -> WatchHandle:
        """Call `callback` for every change under `prefix`, after `start_revision`
        (exclusive) when given, else from now."""

    # -- staleness ------------------------------------------------------------------
    # Per thread: each request's answer says whether *its* reads were stale. Every
    # implementation sets `self._local = threading.local()`; the flag is kept there.
    _local: threading.local

    @property
    def last_read_stale(self) -> bool:
        """Whether this thread's last read was served without quorum."""
        return bool(getattr(self._local, "stale", False))

    def reset_stale(self) -> None:
        self._local.stale = False

    def mark_stale(self) -> None:
        """Flag this thread's answer as stale (a cached view that could not catch up)."""
        self._local.stale = True

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- locks ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, name: str, *, ttl: int = 10, timeout: float = 10.0) -> Iterator[None]:
        """A cluster-wide mutex: a key under a kept lease, created if absent.

        Held until the block ends or the holder dies (its lease expires).
        """
        key = f"locks/{name}"
        kept = self.keep_lease(ttl)
        token = uuid.uuid4().hex
        deadline = self.clock.monotonic() + timeout
        try:
            while not self.create(key, {"token": token}, lease=kept.id):
                if self.clock.monotonic() > deadline:
                    raise Conflict(f"can't lock '{name}' - timeout after {timeout:.0f}s")
                self.clock.sleep(0.05)
            yield
        finally:
            with contextlib.suppress(Unavailable):
                self.txn([("value", key, "==", {"token": token})], [("delete", key)])
            kept.revoke()


class KeptLease:
    """A lease renewed every ttl/3 on the store's clock; `on_lost` runs once if it expires."""

    def __init__(
        self, store: StoreAPI, ttl: int, *, on_lost: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self.clock = store.clock
        self.ttl = ttl
        self.id = store.lease_grant(ttl)
        self.on_lost = on_lost
        self.lost = False
        self._stopped = False
        self._guard = threading.Lock()
        self._last_renewed = self.clock.monotonic()
        self._interval = max(0.3, ttl / 3)
        self._timer: Timer | None = self.clock.call_later(self._interval, self._renew)

    def _renew(self) -> None:
        if self._stopped:
            return
        try:
            granted = self.store.lease_refresh(self.id)
        except Exception as err:  # noqa: BLE001 - any failure counts as a missed renewal
            log.debug("lease %x renewal failed: %s", self.id, err)
            granted = -1
        now = self.clock.monotonic()
        if granted > 0:
            self._last_renewed = now
        elif granted == 0 or now - self._last_renewed >= self.ttl:
            self._lose()
            return
        with self._guard:
            if not self._stopped:
                self._timer = self.clock.call_later(self._interval, self._renew)

    def _lose(self) -> None:
        self.lost = True
        log.warning("lease %x lost", self.id)
        if self.on_lost is not None:
            try:
                self.on_lost()
            except Exception:  # noqa: BLE001
                log.exception("lease lost handler failed")

    def revoke(self) -> None:
        with self._guard:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
        if not self.lost:
            self.store.lease_revoke(self.id)
