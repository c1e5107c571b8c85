"""Live figures of a node's containers: on demand, and for the node's 2 s round.

The round must cost about the same for 1,000 idle containers as for 10, so it
does per container only what changed or is due:

- **State** (running, stopped) comes from one listing of the lxcpath's active
  containers (liblxc reads /proc/net/unix once, no socket per container), so a
  container that stops or starts is seen within one round. A container missing
  from it is looked up as an orphan (running without its monitor). Freezing
  and thawing through corral publish at once (the task measures its guest);
  done behind corral's back, they are seen at the container's next figures read.
- **Figures** (cpu, mem, swap, disk, net, uptime) of an idle running container
  are re-read every FIGURES_EVERY rounds (10 s, as Proxmox's pvestatd),
  containers spread over the rounds by VMID; a busy one (BUSY_CPU at its last
  read) every round. Both through its group files resolved once per
  init process (`cgroups.GroupFiles`; a new init, told by its start time,
  resolves them again). Between reads the round answers the last figures.
- **Config-derived fields** (name, cpus, maxmem, maxswap, maxdisk, the veths)
  are derived once per config object (the node's cluster view hands the same
  object until the record changes), not parsed every round.
- **Disk usage** of a directory root walks the tree (`usage`): stale counts are
  renewed within a per-round time budget.

`one()` (status/current, and after a task) always measures afresh; it measures
CPU against the round's last sample without moving it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import _lxc

from corral.cluster import bridges
from corral.cluster.guest_driver import BUSY_CPU, FIGURES_EVERY
from corral.cluster.schema import parse_size
from corral.lxc import cgroups, orphans, usage
from corral.lxc import config as cfg
from corral.lxc.render import veth_name

WALK_BUDGET = 0.005  # s of disk-usage tree walking per round (0.25 % of a core)


# How long a start's own view of the container stands in for liblxc's (one() checks
# the pid is still that init's all the same).
STARTED_FRESH = 1.0


@dataclass
class _Init:
    """What the round knows about one running container's init process."""

    pid: int
    ticks: int | None  # its start time: a reused PID differs
    files: cgroups.GroupFiles
    static: dict[str, Any] = field(default_factory=dict)  # the static part it was built on
    entry: dict[str, Any] | None = None  # last figures (round reads)


class Collector:
    """Status of the containers of one lxcpath. Thread-safe enough: each container's
    knowledge is replaced as a whole, and the round runs on one thread."""

    def __init__(self, lxcpath: str) -> None:
        self.lxcpath = lxcpath
        self.cpu = cgroups.CpuMeter()
        self._inits: dict[int, _Init] = {}
        # vmid -> (config object, its static part, its stopped entry)
        self._static: dict[int, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
        self._round = 0
        self._started: dict[int, tuple[int, float]] = {}  # vmid -> (init pid, when)

    def _dir(self, vmid: int) -> str:
        return os.path.join(self.lxcpath, str(vmid))

    # -- config-derived ------------------------------------------------------
    def _derived(self, vmid: int, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(static part, stopped entry) of `config`, derived once per config object."""
        hit = self._static.get(vmid)
        if hit is not None and hit[0] is config:
            return hit[1], hit[2]
        vols = cfg.parse_mps(config)
        maxdisk = parse_size(vols["rootfs"].get("size") or "0") if "rootfs" in vols else 0
        static = {
            "vmid": vmid, "name": config.get("hostname") or f"CT{vmid}", "type": "lxc",
            "cpus": int(config.get("cores") or os.cpu_count() or 1),
            "maxmem": int(cfg.value(config, "memory")) << 20,
            "maxswap": int(cfg.value(config, "swap")) << 20, "maxdisk": maxdisk,
            "nets": tuple(cfg.parse_net(config)),
        }  # fmt: skip
        stopped = {
            "vmid": vmid, "name": static["name"], "type": "lxc", "status": "stopped",
            "cpus": static["cpus"], "maxmem": static["maxmem"], "maxswap": static["maxswap"],
            "maxdisk": maxdisk, "cpu": 0, "mem": 0, "swap": 0, "disk": 0, "netin": 0,
            "netout": 0, "uptime": 0, "diskread": 0, "diskwrite": 0,
        }  # fmt: skip
        self._static[vmid] = (config, static, stopped)
        return static, stopped

    def _stopped(self, vmid: int, stopped: dict[str, Any]) -> dict[str, Any]:
        self._inits.pop(vmid, None)
        self.cpu.forget(vmid)
        return dict(stopped)

    def started(self, vmid: int, pid: int) -> None:
        """The driver has just seen `vmid` RUNNING with init `pid`: the next `one()`
        (its task's end, under the same guest lock) need not ask liblxc again."""
        self._started[vmid] = (pid, time.monotonic())

    # -- on demand -----------------------------------------------------------
    def one(self, vmid: int, config: dict[str, Any], *, walk: bool = True) -> dict[str, Any]:
        """Fresh status of one container (liblxc's state, then its files). Without
        `walk`, a disk usage never counted yet is left out (a task's end: the walk of
        a large root tree would hold it up; the round counts it)."""
        static, stopped = self._derived(vmid, config)
        ct_dir = self._dir(vmid)
        pid, when = self._started.pop(vmid, (0, float("-inf")))
        ticks = cgroups.proc_start(pid) if time.monotonic() - when < STARTED_FRESH else None
        state: str | None = None
        ct = None
        if ticks is None:
            # One liblxc handle for state and pid: each handle parses the lxc config.
            # (With a fresh start's pid whose init still lives, the monitor is not asked
            # again: frozen or not, its freezer file says, as state None.)
            ct = _lxc.Container(str(vmid), self.lxcpath) if os.path.isdir(ct_dir) else None
            state = "STOPPED" if ct is None else str(ct.state)
            pid = 0 if ct is None or state == "STOPPED" else int(ct.init_pid)
            if ct is not None and state == "STOPPED":
                pid = orphans.orphan_pid(ct_dir) or 0  # running without its monitor?
                state = "RUNNING" if pid else state
            ticks = cgroups.proc_start(pid) if pid > 0 else None
        if state == "STOPPED" or ticks is None:
            return self._stopped(vmid, stopped)  # stopped, or it exited just now
        return self._measure(
            vmid, static, stopped, pid, ticks, ct=ct, state=state, keep=False, walk=walk
        )

    # -- the round -----------------------------------------------------------
    def many(
        self, items: list[tuple[int, dict[str, Any]]], *, cached: bool = False
    ) -> dict[int, dict[str, Any]]:
        """Status of many containers in one pass. `cached` (the node's round): a
        running container whose figures are not due answers its last ones."""
        active = set(_lxc.list_containers(active=True, defined=False, config_path=self.lxcpath))
        self._round += 1
        now_up = cgroups.host_uptime()
        budget = usage.Budget(WALK_BUDGET)
        out: dict[int, dict[str, Any]] = {}
        for vmid, config in items:
            static, stopped = self._derived(vmid, config)
            init = self._inits.get(vmid)
            if str(vmid) in active:
                if init is None:
                    out[vmid] = self.one(vmid, config)  # new here: liblxc says what it is
                    continue
                pid = init.pid
            else:
                orphan = orphans.orphan_pid(self._dir(vmid))  # its lxc monitor died?
                if not orphan:
                    out[vmid] = self._stopped(vmid, stopped)
                    continue
                pid = orphan
            if (
                cached
                and init is not None
                and init.pid == pid
                and init.entry is not None
                and init.static is static
                and init.entry.get("cpu", 0) < BUSY_CPU
                and (vmid + self._round) % FIGURES_EVERY
            ):
                out[vmid] = init.entry
                continue
            ticks = cgroups.proc_start(pid)
            if init is not None and init.pid == pid and ticks != init.ticks:
                out[vmid] = self.one(vmid, config)  # restarted since: a new init
                continue
            if ticks is None:
                out[vmid] = self._stopped(vmid, stopped)
                continue
            out[vmid] = self._measure(
                vmid, static, stopped, pid, ticks, now_up=now_up, budget=budget, keep=True
            )
        return out

    # -- measuring -----------------------------------------------------------
    def _measure(
        self,
        vmid: int,
        static: dict[str, Any],
        stopped: dict[str, Any],
        pid: int,
        ticks: int,
        *,
        ct: Any = None,
        state: str | None = None,
        now_up: float | None = None,
        budget: usage.Budget | None = None,
        keep: bool,
        walk: bool = True,
    ) -> dict[str, Any]:
        init = self._inits.get(vmid)
        if init is None or init.pid != pid or init.ticks != ticks:
            try:
                init = _Init(pid, ticks, cgroups.group_files(pid))
            except OSError:
                return self._stopped(vmid, stopped)
            self.cpu.forget(vmid)
        fig = cgroups.read_figures(init.files)
        if state is None:
            state = "RUNNING" if fig.freezer == "THAWED" else fig.freezer
        out = dict(stopped)
        out["status"] = "running"
        out["pid"] = pid
        if state in ("FROZEN", "FREEZING"):
            out["frozen"] = 1  # Proxmox keeps status "running" for a frozen container
        # A figure that cannot be read is left out (unknown), never shown as 0.
        mem = fig.mem
        if mem is None:
            # No cgroup mount of ours reaches it: ask liblxc, which asks the monitor.
            mem = lxc_memory(ct if ct is not None else _lxc.Container(str(vmid), self.lxcpath))
        for key, value in (("mem", mem), ("swap", fig.swap)):
            if value is None:
                del out[key]
            else:
                out[key] = value
        if fig.cpu_ns is None:
            del out["cpu"]
        else:
            frac = self.cpu.sample(vmid, fig.cpu_ns, os.cpu_count() or 1, keep=keep)
            out["cpu"] = round(frac, 4)
        now_up = cgroups.host_uptime() if now_up is None else now_up
        out["uptime"] = cgroups.uptime_since(ticks, now_up)
        disk = usage.root_used_bytes(pid, budget, born=ticks, first=walk)
        if disk is None:
            del out["disk"]  # not counted yet: unknown, not 0
        else:
            out["disk"] = disk
        for index in static["nets"]:
            # The host side transmits what the container receives.
            rx, tx = link_stats(veth_name(vmid, index))
            out["netin"] += tx
            out["netout"] += rx
        init.static = static
        init.entry = out
        self._inits[vmid] = init
        return out if keep else dict(out)


def lxc_memory(ct: Any) -> int | None:
    """Memory in use (page cache excluded) as liblxc reads it, or None."""
    try:
        if cgroups.layout() == "v2":
            used, stat, cache = _cgroup_item(ct, "memory.current"), "memory.stat", "file"
        else:
            used, stat, cache = (
                _cgroup_item(ct, "memory.usage_in_bytes"),
                "memory.stat",
                "total_cache",
            )
        if not str(used).strip().isdigit():
            return None
        counts = cgroups.parse_kv(str(_cgroup_item(ct, stat) or ""))
        return max(0, int(used) - counts.get(cache, 0))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _cgroup_item(ct: Any, key: str, tries: int = 5) -> Any:
    """`ct.get_cgroup_item(key)`, retried: the binding reads the file twice (its length,
    then its text) and raises ValueError when a live figure changed length between."""
    for _ in range(tries - 1):
        try:
            return ct.get_cgroup_item(key)
        except ValueError:
            continue
    return ct.get_cgroup_item(key)


def link_stats(name: str) -> tuple[int, int]:
    """(rx, tx) bytes of a host veth: two sysfs reads (a netlink round trip
    costs ~100x more)."""
    base = f"/sys/class/net/{name}/statistics"
    try:
        return int(cgroups.read_raw(f"{base}/rx_bytes")), int(cgroups.read_raw(f"{base}/tx_bytes"))
    except (OSError, ValueError):
        return bridges.link_stats(name)  # sysfs of another netns, or gone: ask netlink
