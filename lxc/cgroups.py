"""A running container's cgroups, /proc and netns: read stats, write limits.

Paths come from /proc/<init pid>/cgroup (read from the host, so they are the
host's view), not from a guess of liblxc's naming. Works on the hybrid v1
layout of this machine and on a pure v2 host.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import subprocess
import time
from typing import Any

from corral.cluster.errors import CommandFailed

CGROUP_ROOT = "/sys/fs/cgroup"


@functools.cache
def layout() -> str:
    """ "v2" on a unified-only host, else "v1" (hybrid counts as v1: limits live there)."""
    return "v2" if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) else "v1"


def paths(pid: int) -> dict[str, str]:
    """{controller: directory} for process `pid`; "" is the v2 (unified) group."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as fh:
        for line in fh:
            _, controllers, rel = line.rstrip("\n").split(":", 2)
            if controllers == "":
                base = CGROUP_ROOT if layout() == "v2" else os.path.join(CGROUP_ROOT, "unified")
                out[""] = base + rel
                continue
            for ctl in controllers.split(","):
                ctl = ctl.removeprefix("name=")
                out[ctl] = os.path.join(CGROUP_ROOT, controllers, rel.lstrip("/"))
    return out


def file_for(pid: int, name: str, where: dict[str, str] | None = None) -> str:
    """Path of cgroup file `name` ("memory.limit_in_bytes") of process `pid`
    (`where`: its `paths()`, when the caller has them already)."""
    found = paths(pid) if where is None else where
    ctl = name.split(".", 1)[0]
    if layout() == "v2":
        return os.path.join(found[""], name)
    if ctl == "cpu" and "cpu" not in found:
        ctl = "cpuacct"
    return os.path.join(found[ctl], name)


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read().strip()


def write_limits(pid: int, values: dict[str, str]) -> None:
    """Write cgroup files; retries in reverse order once (v1 needs memsw >= memory,
    so growing writes memsw first and shrinking writes memory first)."""
    items = list(values.items())
    try:
        _write_all(pid, items)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBUSY):
            raise
        _write_all(pid, list(reversed(items)))
        _write_all(pid, items)


def _write_all(pid: int, items: list[tuple[str, str]]) -> None:
    for name, value in items:
        with open(file_for(pid, name), "w") as fh:
            fh.write(value)


def memory(pid: int, where: dict[str, str] | None = None) -> tuple[int, int]:
    """(mem, swap) in bytes; mem excludes page cache as Proxmox reports it."""
    try:
        where = paths(pid) if where is None else where

        def value(name: str) -> str:
            return read(file_for(pid, name, where))

        if layout() == "v2":
            mem = int(value("memory.current"))
            swap = int(value("memory.swap.current"))
            stat = _kv(value("memory.stat"))
            return max(0, mem - stat.get("file", 0)), swap
        usage = int(value("memory.usage_in_bytes"))
        stat = _kv(value("memory.stat"))
        try:
            memsw = int(value("memory.memsw.usage_in_bytes"))
        except OSError:
            memsw = usage
        return max(0, usage - stat.get("total_cache", 0)), max(0, memsw - usage)
    except (OSError, KeyError, ValueError):
        return 0, 0


def cpu_usage_ns(pid: int, where: dict[str, str] | None = None) -> int:
    try:
        where = paths(pid) if where is None else where
        if layout() == "v2":
            return _kv(read(file_for(pid, "cpu.stat", where))).get("usage_usec", 0) * 1000
        return int(read(os.path.join(where["cpuacct"], "cpuacct.usage")))
    except (OSError, KeyError, ValueError):
        return 0


def freezer_state(pid: int) -> str:
    """ "FROZEN", "FREEZING" or "THAWED" (v1 freezer / v2 cgroup.freeze)."""
    try:
        if layout() == "v2":
            return (
                "FROZEN" if read(os.path.join(paths(pid)[""], "cgroup.freeze")) == "1" else "THAWED"
            )
        return read(os.path.join(paths(pid)["freezer"], "freezer.state"))
    except (OSError, KeyError):
        return "THAWED"


def _kv(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, val = line.partition(" ")
        if val.strip().lstrip("-").isdigit():
            out[key] = int(val)
    return out


def uptime(pid: int) -> int:
    """Seconds since process `pid` started."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        start = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        with open("/proc/uptime") as fh:
            now = float(fh.read().split()[0])
        return max(0, int(now - start))
    except (OSError, IndexError, ValueError):
        return 0


def netns_addresses(pid: int, *, timeout: float = 15.0) -> list[dict[str, Any]]:
    """`ip -j addr` inside the netns of `pid` (nsenter keeps the host's mounts)."""
    argv = ["nsenter", "-t", str(pid), "-n", "ip", "-j", "addr", "show"]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(cmd=" ".join(argv), stderr=f"timed out after {timeout:g} s") from exc
    if proc.returncode:
        raise CommandFailed(cmd=" ".join(argv), stderr=proc.stderr.decode(errors="replace"))
    return parse_ip_addr(proc.stdout.decode())


def parse_ip_addr(text: str) -> list[dict[str, Any]]:
    """`ip -j addr` → Proxmox's interfaces answer: name, hwaddr, inet, inet6 (CIDRs)."""
    out: list[dict[str, Any]] = []
    for link in json.loads(text or "[]"):
        entry: dict[str, Any] = {"name": link.get("ifname"), "hwaddr": link.get("address")}
        for info in link.get("addr_info", []):
            key = "inet" if info.get("family") == "inet" else "inet6"
            entry.setdefault(key, f"{info.get('local')}/{info.get('prefixlen')}")
        out.append(entry)
    return out


class CpuMeter:
    """CPU fraction between two status reads (Proxmox's `cpu`: 1.0 = one full host)."""

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, int]] = {}

    def sample(self, key: int, usage_ns: int, cpus: int) -> float:
        now = time.monotonic()
        prev = self._last.get(key)
        self._last[key] = (now, usage_ns)
        if prev is None or now <= prev[0] or usage_ns < prev[1]:
            return 0.0
        return max(0.0, (usage_ns - prev[1]) / 1e9 / (now - prev[0]) / max(1, cpus))
