"""The cluster's state in memory, fed by one watch: the whole-cluster reads.

`/cluster/resources`, `/nodes`, `/cluster/status` (and the Prometheus scrape)
must stay fast at thousands of guests. Reading and decoding every guest record
from etcd per request cost ~60 ms at 10,000 guests before any work; here each
node keeps the records it needs in memory instead:

- `start()` reads the prefixes below, then ONE watch on the whole key space
  from the oldest of those reads' revisions keeps them current (replayed events
  older than what a key holds are ignored, so the overlap is harmless). When
  that revision was compacted away the watch delivers a fresh read ("resync")
  and the view is rebuilt from it.
- A guest's `/cluster/resources` row is built when its record or its live
  figures change, and serialized once (an `orjson.Fragment`) when first read.
- `sync()` makes a read current: it asks the store for its revision (one
  cheap quorum read) and waits until the watch has delivered up to there, at
  most `max_stale` seconds. A client thus reads its own writes, and an answer
  that could not catch up (no quorum, a lagging watch) says so: `sync()`
  returns False and the API sets `X-Corral-Stale: 1`.
- `caught_up()` is the cheaper promise for reads on a request's hot path (the
  caller's user record and the ACL, a guest's record before a power operation,
  a task's record): no round trip, only a wait until the watch has delivered
  every write THIS process made (StoreAPI.written_revision). Other nodes'
  writes arrive with the watch's lag, milliseconds, as Proxmox's pmxcfs spreads
  a change; callers read the store itself before they answer "no" (a refused
  login, a missing guest), so a change made elsewhere a moment ago is never
  refused (see `local_value`).

Read API (stable; for the API and the metrics scrape, all thread-safe):

    view = ClusterView(store); view.start()      # view.stop() at the end
    view.sync(timeout=None) -> bool              # True: current as of the call
    view.stale_seconds() -> float                # since the last successful sync
    view.revision                                # last store revision applied
    view.nodes() -> [node row]                   # /nodes rows, sorted (copies)
    view.node_infos() -> {node: nodeinfo record}
    view.cluster() -> the cluster/config record
    view.guest_rows() -> [(vmid, Fragment)]      # /cluster/resources vm rows
    view.guest_row(vmid) -> row dict | None      # one of them, as a dict to add to
    view.guests() -> [guest record]              # sorted by key (shared: do not mutate)
    view.live() -> {vmid str: live figures}      # (shared: do not mutate)
    view.storage_rows() -> [(storage id, Fragment)]
    view.reserved() -> {vmid}                    # VMIDs reserved (vmidres/)
    view.vmids() -> {vmid}                       # VMIDs in use: guests' and reserved
    view.caught_up(timeout) -> bool              # holds this process's own writes
    view.wait_revision(revision, timeout) -> bool
    view.kv(key) -> (mod_revision, value) | None # a key under PREFIXES (shared: do not mutate)
    view.items(prefix) -> {key: value}           # keys under a sub-prefix of PREFIXES
    local_value(services, store, key)            # from the view when caught up, else the store
    local_items(services, store, prefix), local_values(...)   # the same, for a prefix
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

from corral.cluster import keys
from corral.cluster.ha import env as ha_env
from corral.cluster.store_api import KV, WRITE_UNKNOWN, Event, StoreAPI, WatchHandle

MAX_STALE = 2.0
# How long a hot-path read waits for the watch to deliver this process's own last
# write (normally it already has: the watch event follows the write by ~1 ms).
CATCH_UP_SECONDS = 0.25
ACCESS = "access/"  # users (with their tokens), groups, the ACL, pools, ticket keys
# The HA resources and the CRM's status: /cluster/resources' `hastate` of each row.
HA_RESOURCES = ha_env.RESOURCES
HA_MANAGER_STATUS = ha_env.MANAGER_STATUS
GUEST_KIND = {"lxc": "CT", "qemu": "VM"}
_LIVE_FIELDS = (
    "cpu", "cpus", "mem", "maxmem", "disk", "maxdisk", "netin", "netout", "diskread",
    "diskwrite", "uptime", "pid", "qmpstatus", "maxswap", "swap",
)  # fmt: skip
NODE_FIELDS = ("cpu", "maxcpu", "mem", "maxmem", "disk", "maxdisk", "uptime")
# What the view keeps (everything else the watch sees only moves the revision).
PREFIXES = (
    keys.NODE_INFO,
    keys.NODE_ALIVE,
    keys.NODE_STATUS,
    keys.GUESTS,
    keys.GUEST_STATUS,
    keys.STORAGE_STATUS,
    keys.VMID_RESERVED,
    keys.CLUSTER,
    keys.STORAGE,
    ACCESS,
    HA_RESOURCES,
    HA_MANAGER_STATUS,
)


def guest_summary(rec: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    """A guest's list row (Proxmox's shape) from its record and live figures."""
    cfg = rec["config"]
    name = cfg.get("hostname") or cfg.get("name") or f"{GUEST_KIND[rec['type']]}{rec['vmid']}"
    out: dict[str, Any] = {
        "vmid": rec["vmid"],
        "name": name,
        "type": rec["type"],
        "status": live.get("status", "unknown"),
        "tags": cfg.get("tags", ""),
    }
    for field in _LIVE_FIELDS:
        if field in live:
            out[field] = live[field]
    out.setdefault("maxmem", int(cfg.get("memory", 512)) * 1024 * 1024)
    if rec.get("lock"):
        out["lock"] = rec["lock"]
    if cfg.get("template"):
        out["template"] = 1
    return out


def _resource_row(rec: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    row = guest_summary(rec, live)
    row["id"] = f"{rec['type']}/{rec['vmid']}"
    row["node"] = rec["node"]
    # Proxmox names a guest's CPU count `maxcpu` here (`cpus` in status/current).
    row["maxcpu"] = row.pop("cpus", None) or _config_cpus(rec)
    return row


def _config_cpus(rec: dict[str, Any]) -> int:
    """The vCPUs a guest's config gives it, for guests without live figures."""
    cfg = rec["config"]
    if rec["type"] == "qemu":
        return int(cfg.get("vcpus") or int(cfg.get("sockets", 1)) * int(cfg.get("cores", 1)))
    return int(cfg.get("cores") or 1)


def _storage_rows(node: str, doc: dict[str, Any]) -> list[tuple[str, orjson.Fragment]]:
    out = []
    for sid, st in sorted((doc or {}).items()):
        row = {
            "id": f"storage/{node}/{sid}",
            "type": "storage",
            "storage": sid,
            "node": node,
            "status": "available" if st.get("active") else "unknown",
            "plugintype": st.get("type"),
            "content": st.get("content", ""),
            "shared": st.get("shared", 0),
            "disk": st.get("used", 0),
            "maxdisk": st.get("total", 0),
        }
        out.append((sid, orjson.Fragment(orjson.dumps(row))))
    return out


def _prefix_of(key: str) -> str | None:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return prefix
    return None


class ClusterView:
    def __init__(self, store: StoreAPI, *, max_stale: float = MAX_STALE) -> None:
        self.store = store
        self.clock = store.clock
        self.max_stale = max_stale
        self.revision = 0
        self._lock = threading.RLock()
        # prefix -> key -> (mod_revision, value)
        self._kv: dict[str, dict[str, tuple[int, Any]]] = {p: {} for p in PREFIXES}
        self._rows: dict[str, tuple[dict[str, Any], orjson.Fragment]] = {}  # guest key -> row
        self._guest_order: list[str] | None = None
        # The resources rows in key order, patched in place when single rows change
        # (live figures change all the time; guests come and go less often).
        self._row_list: list[tuple[int, orjson.Fragment]] | None = None
        self._row_pos: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._nodes: list[dict[str, Any]] | None = None
        self._storage: list[tuple[str, orjson.Fragment]] | None = None
        self._live: dict[str, dict[str, Any]] | None = None
        self._waiters: list[tuple[int, threading.Event]] = []
        self._watch: WatchHandle | None = None
        self._synced_at = float("-inf")

    # -- feeding ------------------------------------------------------------------
    def start(self) -> ClusterView:
        revisions = []
        with self._lock:
            for prefix in PREFIXES:
                kvs, rev = self.store.range_rev(prefix)
                revisions.append(rev)
                for kv in kvs:
                    self._apply(prefix, kv.key, kv.value, kv.mod_revision)
            self.revision = min(revisions)
        self._synced_at = self.clock.monotonic()
        self._watch = self.store.watch("", self._on_event, start_revision=self.revision)
        return self

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None  # caught_up() says no at once: reads go to the store

    def _on_event(self, event: Event) -> None:
        with self._lock:
            if event.kind == "resync":
                self._rebuild(event.value)
            else:
                prefix = _prefix_of(event.key)
                if prefix is not None:
                    value = event.value if event.kind == "put" else None
                    self._apply(prefix, event.key, value, event.revision)
            self.revision = max(self.revision, event.revision)
            done = [w for w in self._waiters if w[0] <= self.revision]
            self._waiters = [w for w in self._waiters if w[0] > self.revision]
        for _, ready in done:
            ready.set()

    def _rebuild(self, kvs: Iterable[KV]) -> None:
        self._kv = {p: {} for p in PREFIXES}
        self._rows.clear()
        self._dirty_all()
        for kv in kvs:
            prefix = _prefix_of(kv.key)
            if prefix is not None:
                self._apply(prefix, kv.key, kv.value, kv.mod_revision)

    def _dirty_all(self) -> None:
        self._guest_order = None
        self._row_list = None
        self._nodes = None
        self._storage = None
        self._live = None

    def _apply(self, prefix: str, key: str, value: Any, revision: int) -> None:
        """Apply a put (value) or delete (None) unless the view already holds newer."""
        table = self._kv[prefix]
        old = table.get(key)
        if old is not None and old[0] >= revision:
            return
        if value is None:
            if old is None:
                return
            del table[key]
        else:
            table[key] = (revision, value)
        if prefix == keys.GUESTS:
            if old is None or value is None:
                self._guest_order = None
                self._row_list = None
            self._drop_row(key)
        elif prefix == keys.GUEST_STATUS:
            vmid = keys.guest_status_vmid(key)
            if vmid is not None:
                self._live = None
                self._drop_row(keys.guest(int(vmid)))
        elif prefix == keys.STORAGE_STATUS:
            self._storage = None
        elif prefix in (keys.NODE_INFO, keys.NODE_ALIVE, keys.NODE_STATUS):
            self._nodes = None

    def _drop_row(self, key: str) -> None:
        if self._rows.pop(key, None) is not None and self._row_list is not None:
            self._dirty.add(key)

    # -- freshness ----------------------------------------------------------------
    def sync(self, timeout: float | None = None) -> bool:
        """Wait until the view holds everything the store held when called."""
        if self.store.quorate is False:
            return False
        try:
            target = self.store.revision()
        except Exception:  # noqa: BLE001 - the store cannot say: answer from memory, stale
            return False
        with self._lock:
            if self.revision >= target:
                self._synced_at = self.clock.monotonic()
                return True
            ready = threading.Event()
            self._waiters.append((target, ready))
        ok = self.clock.wait(ready, self.max_stale if timeout is None else timeout)
        if ok:
            self._synced_at = self.clock.monotonic()
        return ok

    def caught_up(self, timeout: float = CATCH_UP_SECONDS) -> bool:
        """Wait until the view holds every write this process made through its store;
        False (read the store instead) without quorum, without a running watch, or
        when the watch lags more than `timeout`."""
        if self._watch is None or self.store.quorate is False:
            return False
        target = self.store.written_revision
        if target == WRITE_UNKNOWN:
            try:
                target = self.store.revision()
            except Exception:  # noqa: BLE001 - the store cannot say: read it instead
                return False
            self.store.settle_written(target)
        return self.wait_revision(target, timeout)

    def wait_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the view has applied `revision`; False after `timeout` s."""
        with self._lock:
            if self.revision >= revision:
                return True
            ready = threading.Event()
            self._waiters.append((revision, ready))
        return self.clock.wait(ready, timeout)

    def kv(self, key: str) -> tuple[int, Any] | None:
        """(mod revision, value) of a key under one of PREFIXES, None when absent."""
        prefix = _prefix_of(key)
        if prefix is None:
            raise KeyError(f"the view does not keep '{key}'")
        with self._lock:
            return self._kv[prefix].get(key)

    def items(self, sub: str) -> dict[str, Any]:
        """{key: value} of the keys under `sub` (within one of PREFIXES), by key."""
        prefix = _prefix_of(sub)
        if prefix is None:
            raise KeyError(f"the view does not keep '{sub}'")
        with self._lock:
            table = self._kv[prefix]
            return {k: table[k][1] for k in sorted(k for k in table if k.startswith(sub))}

    def stale_seconds(self) -> float:
        return max(0.0, self.clock.monotonic() - self._synced_at)

    # -- reading ------------------------------------------------------------------
    def _values(self, prefix: str) -> dict[str, Any]:
        n = len(prefix)
        return {k[n:]: v for k, (_, v) in self._kv[prefix].items()}

    def cluster(self) -> dict[str, Any]:
        with self._lock:
            entry = self._kv[keys.CLUSTER].get(keys.CLUSTER)
            return dict(entry[1]) if entry else {}

    def node_infos(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self._values(keys.NODE_INFO)

    def nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            if self._nodes is None:
                self._nodes = self._node_rows()
            return [dict(n) for n in self._nodes]

    def _node_rows(self) -> list[dict[str, Any]]:
        infos = self._values(keys.NODE_INFO)
        online = set(self._values(keys.NODE_ALIVE))
        live = self._values(keys.NODE_STATUS)
        out = []
        for name, info in sorted(infos.items()):
            status = live.get(name, {}) if name in online else {}
            entry: dict[str, Any] = {
                "node": name,
                "id": f"node/{name}",
                "type": "node",
                "status": "online" if name in online else "offline",
                "level": "",
                "ssl_fingerprint": info.get("fingerprint", ""),
            }
            for field in NODE_FIELDS:
                if field in status:
                    entry[field] = status[field]
            out.append(entry)
        return out

    def live(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            if self._live is None:
                merged: dict[str, dict[str, Any]] = {}
                for key, (_, entry) in self._kv[keys.GUEST_STATUS].items():
                    vmid = keys.guest_status_vmid(key)
                    if vmid is not None and isinstance(entry, dict):
                        merged[vmid] = entry
                self._live = merged
            return self._live

    def _order(self) -> list[str]:
        if self._guest_order is None:
            self._guest_order = sorted(self._kv[keys.GUESTS])
        return self._guest_order

    def guests(self) -> list[dict[str, Any]]:
        with self._lock:
            table = self._kv[keys.GUESTS]
            return [table[k][1] for k in self._order()]

    def _row(self, key: str) -> tuple[dict[str, Any], orjson.Fragment]:
        row = self._rows.get(key)
        if row is None:
            rec = self._kv[keys.GUESTS][key][1]
            # A guest's live figures are those its own node published.
            held = self._kv[keys.GUEST_STATUS].get(
                keys.guest_status(str(rec.get("node")), rec["vmid"])
            )
            live = (held[1] if held else None) or {}
            built = _resource_row(rec, live)
            row = self._rows[key] = (built, orjson.Fragment(orjson.dumps(built)))
        return row

    def guest_rows(self) -> list[tuple[int, orjson.Fragment]]:
        with self._lock:
            if self._row_list is None or self._guest_order is None:
                order = self._order()
                table = self._kv[keys.GUESTS]
                self._row_list = [(table[k][1]["vmid"], self._row(k)[1]) for k in order]
                self._row_pos = {k: i for i, k in enumerate(order)}
            else:
                for key in self._dirty:
                    i = self._row_pos.get(key)
                    if i is not None:
                        self._row_list[i] = (self._row_list[i][0], self._row(key)[1])
            self._dirty.clear()
            return list(self._row_list)

    def guest_row(self, vmid: int) -> dict[str, Any] | None:
        """One guest's resources row as a dict (a copy, for callers that add to it)."""
        with self._lock:
            key = keys.guest(vmid)
            return dict(self._row(key)[0]) if key in self._kv[keys.GUESTS] else None

    def storage_rows(self) -> list[tuple[str, orjson.Fragment]]:
        with self._lock:
            if self._storage is None:
                rows = []
                for node, doc in sorted(self._values(keys.STORAGE_STATUS).items()):
                    rows.extend(_storage_rows(node, doc))
                self._storage = rows
            return list(self._storage)

    def vmids(self) -> set[int]:
        """Every VMID in use: guests' and reserved ones."""
        with self._lock:
            n = len(keys.GUESTS)
            return {int(k[n:]) for k in self._kv[keys.GUESTS]} | self.reserved()

    def reserved(self) -> set[int]:
        with self._lock:
            n = len(keys.VMID_RESERVED)
            return {int(k[n:]) for k in self._kv[keys.VMID_RESERVED]}


_SHARED = threading.Lock()


def shared_view(services: MutableMapping[str, Any], store: StoreAPI) -> ClusterView:
    """The node's one view (kept in its services), started on first use."""
    view = services.get("cluster_view")
    if view is not None and view.store is store:
        return view  # type: ignore[no-any-return]
    with _SHARED:
        view = services.get("cluster_view")
        if view is None or view.store is not store:
            view = services["cluster_view"] = ClusterView(store).start()
        return view  # type: ignore[no-any-return]


def caught_up_view(
    services: MutableMapping[str, Any] | None, store: StoreAPI
) -> ClusterView | None:
    """The node's view of `store` when it holds this process's writes, else None."""
    view = (services or {}).get("cluster_view")
    if view is not None and view.store is store and view.caught_up():
        return view  # type: ignore[no-any-return]
    return None


def local_value(
    services: MutableMapping[str, Any] | None, store: StoreAPI, key: str, default: Any = None
) -> Any:
    """`key`'s value (a copy) from the node's view when that holds this process's own
    writes (ClusterView.caught_up), else from the store. For hot-path reads whose
    "no" the caller confirms with the store (see the module's docstring)."""
    view = caught_up_view(services, store)
    if view is not None:
        item = view.kv(key)
        return default if item is None else orjson.loads(orjson.dumps(item[1]))
    return store.get_value(key, default)


def local_kv(
    services: MutableMapping[str, Any] | None, store: StoreAPI, key: str
) -> tuple[int, Any] | None:
    """(mod_revision, value copy) of `key` from the node's view when that holds this
    process's writes, else None (also when the view has no such key): what
    StoreAPI.update(known=...) takes, to skip its read."""
    view = caught_up_view(services, store)
    item = None if view is None else view.kv(key)
    return None if item is None else (item[0], orjson.loads(orjson.dumps(item[1])))


def local_values(services: MutableMapping[str, Any] | None, store: StoreAPI, sub: str) -> list[Any]:
    """The values under `sub` (by key, copies), as local_value reads one."""
    return list(local_items(services, store, sub).values())


def local_items(
    services: MutableMapping[str, Any] | None, store: StoreAPI, sub: str
) -> dict[str, Any]:
    """{key: value} under `sub` (by key, copies), as local_value reads one."""
    view = caught_up_view(services, store)
    if view is not None:
        return dict(orjson.loads(orjson.dumps(view.items(sub))))
    return {kv.key: kv.value for kv in store.range(sub)}
