"""History for graphs: round-robin databases (rrdtool) at Proxmox's resolutions.

Layout and definitions follow Proxmox's pmxcfs (`pve2-node`, `pve2-vm`,
`pve2-storage`): a 60 s step, AVERAGE and MAX archives of 70 rows each at
1 min (hour), 30 min (day), 3 h (week), 12 h (month) and 1 week (year), and
for nodes a ten-year archive (`decade`). Reading (`fetch`) answers as
PVE::Cluster::create_rrd_data does: 70 rows ending at the last complete step,
`{"time": t, field: value...}` with undefined values left out.

Where the data lives, and why: every node records the whole cluster, as every
Proxmox node does. A round reads the published status documents of all nodes
(`nodestatus/*`, `gueststatus/*`, `storagestatus/*`: three range reads) and
updates one file per node, guest (by VMID) and storage under DIR/rrd. So a
migrated guest's history is already on its target (its file is keyed by VMID,
not by node), any node answers `rrddata` for any guest without a forward,
history survives a restart (files on disk), and a node that was down has a
gap, as a Proxmox node has. The cost is one file update per guest per round
on each node; tests/bench/bench_metrics.py measures it at 10,000 guests.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from corral.cluster import guest_status, keys, metrics_core
from corral.cluster.cluster_view import ClusterView, caught_up_view

log = logging.getLogger(__name__)

try:  # Debian's python3-rrdtool (install.sh); the venv sees it via system site-packages
    import rrdtool
except ImportError:  # pragma: no cover - reported by available()
    rrdtool = None

STEP = 60
HEARTBEAT = 120
SAMPLE_INTERVAL = 20.0  # seconds between rounds: three samples per 60 s step
ROWS = 70
# timeframe -> (resolution in seconds, rows), as PVE::Cluster's $rrd_def.
TIMEFRAMES = {
    "hour": (60, ROWS),
    "day": (60 * 30, ROWS),
    "week": (60 * 180, ROWS),
    "month": (60 * 720, ROWS),
    "year": (60 * 10080, ROWS),
    "decade": (60 * 10080, 520),
}
CFS = ("AVERAGE", "MAX")

# Data sources per kind, in Proxmox's order; DERIVE turns byte counters into rates.
NODE_DS = (
    ("loadavg", "GAUGE"), ("maxcpu", "GAUGE"), ("cpu", "GAUGE"), ("iowait", "GAUGE"),
    ("memtotal", "GAUGE"), ("memused", "GAUGE"), ("swaptotal", "GAUGE"), ("swapused", "GAUGE"),
    ("roottotal", "GAUGE"), ("rootused", "GAUGE"), ("netin", "DERIVE"), ("netout", "DERIVE"),
)  # fmt: skip
VM_DS = (
    ("maxcpu", "GAUGE"), ("cpu", "GAUGE"), ("maxmem", "GAUGE"), ("mem", "GAUGE"),
    ("maxdisk", "GAUGE"), ("disk", "GAUGE"), ("netin", "DERIVE"), ("netout", "DERIVE"),
    ("diskread", "DERIVE"), ("diskwrite", "DERIVE"),
)  # fmt: skip
STORAGE_DS = (("total", "GAUGE"), ("used", "GAUGE"))
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
KINDS = {"pve2-node": NODE_DS, "pve2-vm": VM_DS, "pve2-storage": STORAGE_DS}


def available() -> str | None:
    """None when history can be kept, else why not."""
    return None if rrdtool is not None else "python3-rrdtool is not installed"


def _rras(kind: str) -> list[str]:
    out = []
    for cf in CFS:
        for name in ("hour", "day", "week", "month", "year"):
            reso, rows = TIMEFRAMES[name]
            out.append(f"RRA:{cf}:0.5:{reso // STEP}:{rows}")
        if kind == "pve2-node":
            reso, rows = TIMEFRAMES["decade"]
            out.append(f"RRA:{cf}:0.5:{reso // STEP}:{rows}")
    return out


class RrdStore:
    """The node's round-robin files: DIR/rrd/{kind}/{name}.rrd.

    librrd keeps per-call state in globals, so every call goes through one lock."""

    def __init__(self, base: str | Path) -> None:
        self.base = Path(base)
        self._lock = threading.Lock()
        self._last: dict[str, int] = {}  # file -> last update time (rrdtool rejects older)
        self._paths: dict[tuple[str, str], Path] = {}  # validated once

    def path(self, kind: str, name: str) -> Path:
        known = self._paths.get((kind, name))
        if known is not None:
            return known
        parts = name.split("/")
        if kind not in KINDS or len(parts) != (2 if kind == "pve2-storage" else 1):
            raise ValueError(f"bad rrd name {kind}/{name}")
        if not all(_NAME.fullmatch(p) for p in parts):
            raise ValueError(f"bad rrd name {kind}/{name}")
        path = self._paths[(kind, name)] = self.base / kind / f"{name}.rrd"
        return path

    def update(
        self, kind: str, name: str, values: dict[str, Any], when: float, *, gap: float = 0
    ) -> bool:
        """Record one sample; False when it is not newer than the file's last one
        (or than the last one + `gap`: for figures that did not move since, a sample
        per step is as good as three, within the heartbeat)."""
        if rrdtool is None:
            return False
        path = self.path(kind, name)
        ts = int(when)
        key = str(path)
        fields = []
        for ds, _type in KINDS[kind]:
            v = values.get(ds)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                fields.append("U")
            elif _type == "DERIVE":
                fields.append(str(int(v)))
            else:
                fields.append(repr(float(v)))
        with self._lock:
            if self._last.get(key, 0) + gap >= ts:
                return False
            if key not in self._last and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                ds_defs = [f"DS:{ds}:{t}:{HEARTBEAT}:0:U" for ds, t in KINDS[kind]]
                tmp = path.with_suffix(".tmp")
                # Written aside and renamed: a crash never leaves a half-made file.
                rrdtool.create(str(tmp), "--step", str(STEP), "--start", str(ts - 1),
                               *ds_defs, *_rras(kind))  # fmt: skip
                os.replace(tmp, path)
            try:
                rrdtool.update(key, f"{ts}:{':'.join(fields)}")
            except rrdtool.OperationalError as err:
                # After a restart the file's last update is unknown here: an old sample
                # is refused, and the next newer one goes in.
                if "minimum one second step" in str(err) or "illegal attempt" in str(err):
                    self._last[key] = int(rrdtool.last(key))
                    return False
                # A file removed or damaged under us: made again on the next sample.
                self._last.pop(key, None)
                log.warning("history file %s: %s", key, err)
                return False
            self._last[key] = ts
        return True

    def fetch(self, kind: str, name: str, timeframe: str, cf: str = "AVERAGE") -> list[dict]:
        """Proxmox's create_rrd_data: rows from now - reso*rows to the last full step."""
        reso, rows = TIMEFRAMES[timeframe]
        path = self.path(kind, name)
        if rrdtool is None or not path.exists():
            return []
        ctime = reso * int(time.time() // reso)
        start = ctime - reso * rows
        with self._lock:
            (first, _end, step), names, data = rrdtool.fetch(
                str(path), cf, "-s", str(start), "-e", str(ctime - 1), "-r", str(reso)
            )
        out = []
        t = first
        for line in data:
            entry: dict[str, Any] = {"time": t}
            for ds, value in zip(names, line, strict=False):
                if value is not None:
                    entry[ds] = value
            out.append(entry)
            t += step
        return out

    def forget(self, kind: str, name: str) -> None:
        """A destroyed guest's history goes with it (as Proxmox removes pve2-vm/VMID)."""
        path = self.path(kind, name)
        with self._lock:
            self._last.pop(str(path), None)
            path.unlink(missing_ok=True)


# -- one round: the cluster's published figures into the files -------------------------


def node_sample(status: dict[str, Any]) -> dict[str, Any]:
    host = status.get("host") or {}
    load = (host.get("loadavg") or ["0"])[0]
    mem, swap, root = host.get("memory", {}), host.get("swap", {}), host.get("rootfs", {})
    return {
        "loadavg": float(load),
        "maxcpu": status.get("maxcpu"),
        "cpu": status.get("cpu"),
        "iowait": host.get("wait"),
        "memtotal": mem.get("total", status.get("maxmem")),
        "memused": mem.get("used", status.get("mem")),
        "swaptotal": swap.get("total"),
        "swapused": swap.get("used"),
        "roottotal": root.get("total", status.get("maxdisk")),
        "rootused": root.get("used", status.get("disk")),
        "netin": host.get("netin"),
        "netout": host.get("netout"),
    }


def guest_sample(entry: dict[str, Any]) -> dict[str, Any]:
    return {"maxcpu": entry.get("cpus", entry.get("maxcpu")), **entry}


def storage_sample(entry: dict[str, Any]) -> dict[str, Any]:
    return {"total": entry.get("total"), "used": entry.get("used")}


def record_round(
    rrd: RrdStore, store: Any, now: float | None = None, *, view: ClusterView | None = None
) -> int:
    """Record every published figure of the cluster; returns the number of samples.
    From the node's `view` when given (in memory: at 10,000 guests a range read of
    every status key was 2 MB to fetch and decode per round, on every node), else
    from the store."""
    now = time.time() if now is None else now
    count = 0
    with metrics_core.Timer() as t:
        if view is not None:
            nodes, live = view.items(keys.NODE_STATUS), view.live()
            storages = view.items(keys.STORAGE_STATUS)
        else:
            nodes = {kv.key: kv.value for kv in store.range(keys.NODE_STATUS)}
            live = guest_status.live_status(store)
            storages = {kv.key: kv.value for kv in store.range(keys.STORAGE_STATUS)}
        for key, value in nodes.items():
            node = key.split("/", 1)[1]
            st = value or {}
            count += rrd.update("pve2-node", node, node_sample(st), st.get("time", now))
        for vmid, entry in live.items():
            when = entry.get("time", now)
            # A node re-publishes an entry only when its figures move, and each
            # once every guest_status.REFRESH s: one that recent holds now,
            # recorded once a step (an idle guest: a third of the updates).
            gap = 0.0
            if now - GUEST_MAX_AGE <= when < now - SAMPLE_INTERVAL:
                when, gap = now, STEP - SAMPLE_INTERVAL / 2
            elif now - SAMPLE_INTERVAL <= when < now:
                when = now
            count += rrd.update("pve2-vm", vmid, guest_sample(entry), when, gap=gap)
        for key, value in storages.items():
            node = key.split("/", 1)[1]
            for sid, entry in (value or {}).items():
                if isinstance(entry, dict):
                    count += rrd.update("pve2-storage", f"{node}/{sid}",
                                        storage_sample(entry), now)  # fmt: skip
    metrics_core.RRD_UPDATE_SECONDS.observe(t.seconds)
    return count


def prune(rrd: RrdStore, store: Any, *, view: ClusterView | None = None) -> int:
    """Remove the history of guests that no longer exist (a VMID used again later
    starts a fresh graph). Judged by the guest records, not by the status documents:
    the guests of a node that is down have no status but still exist."""
    folder = rrd.base / "pve2-vm"
    if not folder.is_dir():
        return 0
    if view is not None:
        alive = {str(rec["vmid"]) for rec in view.guests()}
    else:
        alive = {kv.key.rsplit("/", 1)[1] for kv in store.range(keys.GUESTS)}
    gone = 0
    for entry in folder.glob("*.rrd"):
        if entry.stem not in alive:
            rrd.forget("pve2-vm", entry.stem)
            gone += 1
    return gone


GUEST_MAX_AGE = 75.0  # s: 2.5 x guest_status.REFRESH
PRUNE_EVERY = 15  # rounds (5 minutes)
_busy = threading.Lock()


def status_hook(node: Any) -> None:
    """Registered with the daemon's status loop: a round every SAMPLE_INTERVAL, off the
    loop's thread (10,000 file updates must not delay the node's own status)."""
    services = node.services
    rrd = services.get("rrd")
    if rrd is None:
        if available() is not None:
            return
        rrd = services["rrd"] = RrdStore(Path(services["data_dir"]) / "rrd")
    now = time.monotonic()
    if now - services.get("rrd_last_round", -1e9) < SAMPLE_INTERVAL:
        return
    if not _busy.acquire(blocking=False):
        return
    services["rrd_last_round"] = now

    def run() -> None:
        try:
            record_round(rrd, node.store, view=caught_up_view(services, node.store))
            services["rrd_rounds"] = rounds = services.get("rrd_rounds", 0) + 1
            if rounds % PRUNE_EVERY == 0:
                prune(rrd, node.store, view=caught_up_view(services, node.store))
            metrics_core.LEADER.sample(int(getattr(node.store.status(), "leader", 0) or 0))
        except Exception as err:  # noqa: BLE001 - retried next round
            log.warning("history round failed: %s", err)
        finally:
            _busy.release()

    threading.Thread(target=run, name="rrd", daemon=True).start()
