"""Live figures of a running VM with Proxmox's status/current field names.

`collect()` runs on the libvirt pool (one deadline for all its calls); the
rest reads /proc and the taps' counters.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import libvirt

from corral.cluster import bridges

# libvirt state -> Proxmox's qmpstatus (status stays "running" unless stopped).
QMPSTATUS = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_CRASHED: "internal-error",
    libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
}


class CpuMeter:
    """CPU fraction between two reads, relative to the VM's vCPUs (Proxmox's `cpu`)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def sample(self, key: int, cpu_ns: int, cpus: int) -> float:
        now = time.monotonic()
        with self._lock:
            prev = self._last.get(key)
            self._last[key] = (now, cpu_ns)
        if prev is None or now <= prev[0] or cpu_ns < prev[1]:
            return 0.0
        return min(1.0, max(0.0, (cpu_ns - prev[1]) / 1e9 / (now - prev[0]) / max(1, cpus)))


def pid_file(uri: str, root: str | None, name: str) -> str | None:
    if root is not None:
        return os.path.join(root, "run", "qemu", f"{name}.pid")
    if uri.rstrip("/").endswith("/system"):
        return f"/run/libvirt/qemu/{name}.pid"
    return None


def read_pid(path: str | None) -> int | None:
    if path is None:
        return None
    try:
        with open(path) as fh:
            pid = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and os.path.exists(f"/proc/{pid}") else None


def process_uptime(pid: int) -> int:
    """Seconds since the process started (QEMU's uptime is Proxmox's `uptime`)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
        with open("/proc/uptime") as fh:
            boot = float(fh.read().split()[0])
    except (OSError, IndexError, ValueError):
        return 0
    start = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    return max(0, int(boot - start))


def collect(dom: libvirt.virDomain, disk_devs: list[str]) -> dict[str, Any]:
    """One round of libvirt calls: state, cpu time, memory, block counters."""
    state, _ = dom.state()
    info = dom.info()  # [state, max KiB, mem KiB, vcpus, cpu time ns]
    out: dict[str, Any] = {"state": state, "cpu_ns": int(info[4]), "cur_kib": int(info[2])}
    try:
        out["memstats"] = dom.memoryStats()
    except libvirt.libvirtError:
        out["memstats"] = {}
    read = written = 0
    for dev in disk_devs:
        try:
            _, rd, _, wr, _ = dom.blockStats(dev)
        except libvirt.libvirtError:
            continue  # an empty cdrom has no counters
        read, written = read + max(0, rd), written + max(0, wr)
    out["diskread"], out["diskwrite"] = read, written
    return out


def memory_used(raw: dict[str, Any]) -> int:
    """Bytes the guest uses: from balloon stats when the guest reports them, else QEMU's RSS."""
    stats = raw.get("memstats") or {}
    if "available" in stats and "unused" in stats:
        return max(0, int(stats["available"]) - int(stats["unused"])) * 1024
    if "rss" in stats:
        return int(stats["rss"]) * 1024
    return int(raw.get("cur_kib", 0)) * 1024


def net_counters(taps: list[str]) -> tuple[int, int]:
    """(netin, netout) as the guest sees them: the tap transmits what the guest receives."""
    netin = netout = 0
    for tap in taps:
        rx, tx = bridges.link_stats(tap)
        netin, netout = netin + tx, netout + rx
    return netin, netout
