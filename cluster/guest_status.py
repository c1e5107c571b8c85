"""A node's live guest figures: measured every round, written to etcd when they move.

Each guest's figures are one key, gueststatus/{node}/{vmid}, bound to its node's
lease (the node's in-memory copy of all of them is `services["status_doc"]`).
The daemon's round (every 2 s) asks each driver for its guests' figures in one
pass (`status_many(cached=True)`: state every round, figures when due) and
writes only the guests whose entry moved:

- a guest appeared (put) or went (delete), or a field other than the figures
  changed (status, frozen, pid, name, maxmem...): written in that round;
- a figure moved beyond its threshold (cpu by half a percent of the host, a
  byte count by 1 MiB and 1 %): written, that guest's entry re-timed;
- otherwise the entry published last stays as it was, with its `time`; every
  REFRESH seconds each entry is re-timed and written (uptime, small drift), each
  guest at its own phase of the period, so a node's guests do not all come at
  once (1,000 guests: ~67 keys a round, not 1,000 every 15th round).

So 1,000 idle containers cost no write but the REFRESH, and the cluster view
rebuilds only the rows that moved. A task that changes a guest publishes that
guest's key at once (`only=`, or in its end's transaction: StatusAtEnd), at
~300 bytes whatever the node holds (the whole node's document at 1,000 guests
was 300 KB, and its transaction 11 ms against 2.6: tests/bench/bench_etcd.py);
the API's status/current measures its guest on demand, so neither waits for a
round.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from corral.cluster import keys, metrics_core
from corral.cluster.errors import CorralError
from corral.cluster.guest_driver import GuestDriver
from corral.cluster.store_api import KV, StoreAPI

log = logging.getLogger(__name__)

REFRESH = 30.0  # s: every entry re-timed and written at least this often
TXN_OPS = 100  # keys a round writes per transaction (etcd refuses more than 128 by default)
CPU_STEP = 0.005  # fraction of the host
BYTES_STEP = 1 << 20  # and 1 % of the value
_COUNTED = frozenset({"mem", "swap", "disk", "netin", "netout", "diskread", "diskwrite"})
_IGNORED = frozenset({"time", "uptime"})  # re-published with the REFRESH


def local_guests(store: StoreAPI, node: str) -> list[dict[str, Any]]:
    return [kv.value for kv in store.range(keys.GUESTS) if kv.value.get("node") == node]


def guest_live(store: StoreAPI, node: str, vmid: int | str) -> dict[str, Any]:
    """One guest's published live status ({} when its node published none)."""
    return store.get_value(keys.guest_status(node, vmid)) or {}


def node_live(store: StoreAPI, node: str) -> dict[str, dict[str, Any]]:
    """vmid -> published live status of one node's guests (one range read)."""
    return _entries(store.range(keys.guest_status_prefix(node)))


def _entries(kvs: list[KV]) -> dict[str, dict[str, Any]]:
    """vmid -> entry of gueststatus keys (keys of another form are left out)."""
    out: dict[str, dict[str, Any]] = {}
    for kv in kvs:
        vmid = keys.guest_status_vmid(kv.key)
        if vmid is not None and isinstance(kv.value, dict):
            out[vmid] = kv.value
    return out


def _write(
    store: StoreAPI,
    node: str,
    last: Mapping[str, Any],
    doc: Mapping[str, Any],
    lease: int | None,
    *,
    gone: set[str] | frozenset[str] = frozenset(),
) -> int:
    """Write the entries of `doc` that are not the very objects published in `last`,
    and delete those `last` (or `gone`) has and `doc` has not; keys written."""
    ops: list[tuple[Any, ...]] = [
        ("put", keys.guest_status(node, vmid), entry, lease)
        for vmid, entry in doc.items()
        if last.get(vmid) is not entry
    ]
    ops += [("delete", keys.guest_status(node, vmid)) for vmid in (set(last) | gone) - set(doc)]
    for i in range(0, len(ops), TXN_OPS):
        store.txn([], ops[i : i + TXN_OPS])
    return len(ops)


def refresh_due(vmid: str, published: Any, now: float) -> bool:
    """Whether the entry published at `published` is to be re-timed at `now`: once a
    REFRESH period, at the guest's own phase of it."""
    if not isinstance(published, (int, float)):
        return True
    phase = (int(vmid) * 7919) % int(REFRESH)  # spreads the guests over the period
    return (now + phase) // REFRESH != (published + phase) // REFRESH


def moved(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `new` differs from the published `old` enough to be written."""
    if old is new:
        return False
    for key in old.keys() | new.keys():
        if key in _IGNORED:
            continue
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            if key == "cpu" and abs(a - b) < CPU_STEP:
                continue
            if key in _COUNTED and abs(a - b) < max(BYTES_STEP, abs(a) / 100):
                continue
        return True
    return False


def _measure(
    driver: GuestDriver | None, rec: dict[str, Any], now: float, *, task_end: bool = False
) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": "unknown"}
    if driver is not None and rec.get("lock") != "create":
        try:
            measure = driver.status_now if task_end else driver.status
            entry = measure(rec["vmid"], rec["config"])
        except CorralError as err:
            entry = {"status": "unknown", "error": str(err)}
        except Exception as err:  # noqa: BLE001 - one broken guest must not hide the rest
            log.warning("status of %s failed: %s", rec["vmid"], err)
            entry = {"status": "unknown", "error": str(err)}
    elif rec.get("lock") == "create":
        entry = {"status": "stopped"}
    entry["time"] = now
    return entry


def _local_records(
    store: StoreAPI, node: str, services: MutableMapping[str, Any]
) -> list[dict[str, Any]]:
    """This node's guest records for the 2 s round: from the node's cluster view
    (in memory, fed by its watch) when it has loaded, not a range read and
    decode of every guest of the cluster each round. A guest a task just
    created or moved is published by that task from its record."""
    view = services.get("cluster_view")
    if (
        view is not None
        and view.store is store
        and view.revision > 0
        and store.quorate is not False
    ):
        return [r for r in view.guests() if r.get("node") == node]
    return local_guests(store, node)


def _measure_many(
    drivers: Mapping[str, GuestDriver], recs: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each driver measures its built guests in one pass (cached figures while not
    due); a failing pass leaves them to _measure one by one. Entries are shared."""
    out: dict[str, dict[str, Any]] = {}
    for type_, driver in drivers.items():
        mine = [r for r in recs if r["type"] == type_ and r.get("lock") != "create"]
        if not mine:
            continue
        try:
            figures = driver.status_many([(r["vmid"], r["config"]) for r in mine], cached=True)
        except Exception as err:  # noqa: BLE001 - measured one by one instead
            log.warning("status of %s guests in one pass failed: %s", type_, err)
            continue
        for vmid, entry in figures.items():
            out[str(vmid)] = entry
    return out


def publish_status_for(
    store: StoreAPI,
    node: str,
    services: MutableMapping[str, Any],
    *,
    only: int | None = None,
    rec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure and publish this node's guests (the round); returns the document.

    With `only` (a task changed that guest), only that guest is measured again
    and the others keep their published entries: measuring every guest after
    every task made N starts cost O(N^2). The node's last document is kept in
    `services` under a lock, so concurrent publishers lose no update.
    """
    drivers = services.get("drivers") or {}
    lock = services.setdefault("status_lock", threading.Lock())
    now = store.clock.time()
    if only is not None and services.get("status_doc") is not None:
        # One guest changed: read its record only, not every guest's (O(1) per task).
        if rec is None or rec.get("vmid") != only:
            rec = store.get_value(keys.guest(only))
        entry = None
        if rec is not None and rec.get("node") == node:
            entry = _measure(drivers.get(rec["type"]), rec, now)
        with lock:
            one: dict[str, Any] = dict(services.get("status_doc") or {})
            if entry is not None:
                one[str(only)] = entry
                store.put(keys.guest_status(node, only), entry, lease=services.get("lease_id"))
            else:
                one.pop(str(only), None)
                store.delete(keys.guest_status(node, only))
            services["status_doc"] = one
            _bump(services, only)
        return one
    recs = _local_records(store, node, services)
    with metrics_core.Timer() as took:
        # Measured without the status lock: a driver's pass can wait (libvirt answers
        # nothing about any VM while one is being destroyed: seconds), and every task
        # end on this node takes that lock. A guest a task published meanwhile (its
        # generation moved) keeps the task's entry, which is the newer.
        with lock:
            generations = dict(services.get("status_gen") or {})
        batch = _measure_many(drivers, recs)
        for rec in recs:
            if str(rec["vmid"]) not in batch:
                batch[str(rec["vmid"])] = _measure(drivers.get(rec["type"]), rec, now)
        with lock:
            last: dict[str, Any] = services.get("status_doc") or {}
            moved_since = services.get("status_gen") or {}
            # The driver's entry each published one was compared with: a cached entry
            # handed again (figures not due) is the same object, and needs no compare.
            seen: dict[str, Any] = services.get("status_seen") or {}
            doc: dict[str, Any] = {}
            compared: dict[str, Any] = {}
            changed = len(recs) != len(last)
            for rec in recs:
                key = str(rec["vmid"])
                old = last.get(key)
                if moved_since.get(key) != generations.get(key):
                    if old is not None:  # absent: a task removed it (the guest went)
                        doc[key] = old
                    continue
                new = compared[key] = batch[key]
                if (
                    old is not None
                    and not refresh_due(key, old.get("time"), now)
                    and (seen.get(key) is new or not moved(old, new))
                ):
                    doc[key] = old  # as published, with the time of its figures
                    continue
                doc[key] = {**new, "time": now}
                changed = True
            services["status_seen"] = compared
            first = "status_doc" not in services
            if changed or first:
                # The first round of this daemon also deletes what an earlier run of
                # it published for guests it no longer has (those keys live on with
                # its old lease until that expires).
                gone = set(node_live(store, node)) if first else set()
                _write(store, node, {} if first else last, doc, services.get("lease_id"),
                       gone=gone)  # fmt: skip
                services["status_doc"] = doc
    metrics_core.STATUS_ROUNDS.labels("written" if changed else "unchanged").inc()
    metrics_core.STATUS_ROUND_SECONDS.observe(took.seconds)
    return services.get("status_doc") or doc


def _bump(services: MutableMapping[str, Any], vmid: int | str) -> None:
    """A task published `vmid`'s entry (under the status lock): a round that
    measured before keeps it (publish_status_for)."""
    generations = services.setdefault("status_gen", {})
    generations[str(vmid)] = generations.get(str(vmid), 0) + 1


def status_hook(node: Any) -> None:
    """Registered with the daemon's status loop (every 2 s)."""
    publish_status_for(node.store, node.name, node.services)


def live_status(store: StoreAPI) -> dict[str, dict[str, Any]]:
    """vmid -> live figures, for the whole cluster in one range read."""
    return _entries(store.range(keys.GUEST_STATUS))


class StatusAtEnd:
    """One guest's new entry (its gueststatus key), written in the same
    transaction as the end of the task that changed it (TaskContext.end_writes):
    whoever sees the task OK reads the new state, at one etcd write, not two.
    The guest is measured first; the node's status lock is then held until the
    write is done, and the write moves the guest's generation, so the 2 s round
    (which measures without the lock) never writes an older entry over it."""

    def __init__(
        self, store: StoreAPI, node: str, services: MutableMapping[str, Any], rec: dict[str, Any]
    ) -> None:
        self.store, self.node, self.services, self.rec = store, node, services, rec
        self._lock = services.setdefault("status_lock", threading.Lock())
        self._doc: dict[str, Any] | None = None

    def begin(self) -> list[tuple[Any, ...]]:
        drivers = self.services.get("drivers") or {}
        vmid = str(self.rec["vmid"])
        entry = None
        if self.rec.get("node") == self.node:
            now = self.store.clock.time()
            entry = _measure(drivers.get(self.rec["type"]), self.rec, now, task_end=True)
        with self._held():
            doc = dict(self.services.get("status_doc") or {})
            if entry is not None:
                doc[vmid] = entry
            else:
                doc.pop(vmid, None)
        self._doc = doc
        key = keys.guest_status(self.node, vmid)
        if vmid in doc:
            return [("put", key, doc[vmid], self.services.get("lease_id"))]
        return [("delete", key)]

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """Takes the status lock for the rest of the end (end() releases it), or
        releases it at once if building the write fails."""
        self._lock.acquire()
        try:
            yield
        except BaseException:
            self._lock.release()
            raise

    def end(self, written: bool) -> None:
        try:
            if written and self._doc is not None:
                self.services["status_doc"] = self._doc
            if written:
                _bump(self.services, self.rec["vmid"])
        finally:
            self._doc = None
            self._lock.release()


class GoneAtEnd(StatusAtEnd):
    """A destroyed guest's record and its gueststatus key, deleted in the
    transaction that ends the destroy (TaskContext.end_writes): whoever sees the
    task OK finds the guest gone, and the destroy's end costs one etcd write, not
    four (the record's delete, a read and a delete of its entry, then the end).
    Should the end fail to be written, the record stays, locked "destroyed", and
    the node's recovery finishes the destroy. The status lock is held as by
    StatusAtEnd, whose end() this shares."""

    def begin(self) -> list[tuple[Any, ...]]:
        vmid = str(self.rec["vmid"])
        with self._held():
            published = self.services.get("status_doc")
            if published is not None:  # None: no round yet (its first write sweeps)
                self._doc = {k: v for k, v in published.items() if k != vmid}
        return [("delete", keys.guest(int(vmid))), ("delete", keys.guest_status(self.node, vmid))]
