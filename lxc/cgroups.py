"""A running container's cgroups, /proc and netns: read stats, write limits.

Paths come from /proc/<init pid>/cgroup, resolved against the cgroup mounts of
this process (/proc/self/mountinfo), not joined to /sys/fs/cgroup: both files
give cgroup paths relative to the reader's cgroup namespace, so the join holds
on v1, v2 and hybrid hosts, with or without a cgroup namespace, nested in a
system container or not. Inside a namespace a guest's cgroup may lie above the
namespace root ("/../lxc.payload.100"), reachable only through a mount whose
root is above it too ("/.."). A figure whose file cannot be found or read is
unknown (None), logged once per container and file, never reported as 0.
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import logging
import os
import posixpath
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from corral.cluster.errors import CommandFailed

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
MOUNTINFO = "/proc/self/mountinfo"


@functools.cache
def layout() -> str:
    """ "v2" on a unified-only host, else "v1" (hybrid counts as v1: limits live there)."""
    try:
        with open(MOUNTINFO) as fh:
            found = layout_of(parse_mountinfo(fh.read()))
    except OSError:
        found = None
    if found is not None:
        return found
    return "v2" if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) else "v1"


def layout_of(mounts: list[Mount]) -> str | None:
    """The layout the mounts show: any v1 hierarchy with a resource controller makes it
    v1 (hybrid included: the limits live there), cgroup2 alone v2, nothing None."""
    if any(m.hierarchy - {h for h in m.hierarchy if h.startswith("name=")} for m in mounts):
        return "v1"
    if any(not m.hierarchy for m in mounts):
        return "v2"
    return None


class CgroupNotFound(OSError):
    """A process's cgroup is not reachable through any cgroup mount of this host."""


@dataclass(frozen=True)
class Mount:
    root: tuple[str, ...]  # the mounted cgroup, as components ("..", "lxc.payload.1")
    point: str  # where it is mounted
    hierarchy: frozenset[str]  # v1 controllers ({"cpu", "cpuacct"}, {"name=systemd"}); v2: {}


def _components(path: str) -> tuple[str, ...]:
    """A cgroup path as components, keeping leading ".." (normpath would drop them)."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == ".." and out and out[-1] != "..":
            out.pop()
        else:
            out.append(part)
    return tuple(out)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup (v1) and cgroup2 mounts listed in a mountinfo text."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        if tail[0] == "cgroup2":
            hierarchy: frozenset[str] = frozenset()
        else:
            opts = tail[2].split(",")
            known = {o for o in opts if o not in _MOUNT_OPTIONS and "=" not in o}
            known |= {o for o in opts if o.startswith("name=")}
            hierarchy = frozenset(known)
        mounts.append(Mount(_components(_unescape(fields[3])), _unescape(fields[4]), hierarchy))
    return mounts


# Superblock options of a v1 cgroup mount that are not controllers.
_MOUNT_OPTIONS = {"rw", "ro", "noprefix", "clone_children", "xattr", "nsdelegate",
                  "memory_recursiveprot", "memory_localevents", "favordynmods"}  # fmt: skip


def parse_proc_cgroup(text: str) -> dict[frozenset[str], tuple[str, ...]]:
    """/proc/PID/cgroup → {hierarchy (v1 controllers, {} for v2): path components}."""
    out: dict[frozenset[str], tuple[str, ...]] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        key = frozenset(c for c in controllers.split(",") if c)
        out[key] = _components(rel)
    return out


def resolve(
    mounts: list[Mount], hierarchy: frozenset[str], path: tuple[str, ...], pid: int | None = None
) -> str | None:
    """The directory of cgroup `path` of `hierarchy` through one of `mounts`, or None.

    A mount whose root contains the path gives it directly. A mount whose root lies
    above this namespace's root (root ".." while the path is "/x") hides the
    namespace's own name: the directory is then found by the path's tail below the
    mount and confirmed by `pid` in its member list."""
    candidates = [m for m in mounts if m.hierarchy == hierarchy]
    for m in candidates:
        rest = path[len(m.root) :]
        if path[: len(m.root)] == m.root and ".." not in rest:
            return posixpath.join(m.point, *rest)
    tail = tuple(p for p in path if p != "..")
    for m in candidates:
        if pid is None or not m.root or m.root[0] != "..":
            continue
        ups = sum(1 for p in m.root if p == "..")
        pattern = posixpath.join(m.point, *(["*"] * ups), *tail)
        for found in glob.glob(glob.escape(m.point) + pattern[len(m.point) :]):
            if _has_member(found, pid):
                return found
    return None


def _has_member(directory: str, pid: int) -> bool:
    for name in ("cgroup.procs", "tasks"):
        try:
            with open(os.path.join(directory, name)) as fh:
                return str(pid) in fh.read().split()
        except OSError:
            continue
    return False


def paths(pid: int) -> dict[str, str]:
    """{controller: directory} for process `pid`; "" is the v2 (unified) group.

    Raises FileNotFoundError when `pid` is gone; a hierarchy that no mount here
    reaches is left out (its figures are then unknown)."""
    with open(f"/proc/{pid}/cgroup") as fh:
        text = fh.read()
    # Status reads every container's groups every 2 s and a guest's groups do not move:
    # reuse the resolution while /proc/PID/cgroup reads the same and its folders exist.
    key = (pid, text, MOUNTINFO)
    cached = _resolved.get(key)
    if cached is not None and all(os.path.isdir(d) for d in cached.values()):
        return dict(cached)
    mine = parse_proc_cgroup(text)
    out, missing = _resolve_all(pid, mine, _cgroup_mounts())
    if missing or not all(os.path.isdir(d) for d in out.values()):
        out, missing = _resolve_all(pid, mine, _cgroup_mounts(fresh=True))  # mounts changed?
    for hierarchy in missing:
        _once(
            pid,
            "/".join(sorted(hierarchy)) or "unified",
            "not reachable from this host's cgroup mounts",
        )
    if len(_resolved) > 4096:
        _resolved.clear()
    _resolved[key] = dict(out)
    return out


def _cgroup_mounts(*, fresh: bool = False) -> list[Mount]:
    """This host's cgroup mounts, read again at most every MOUNTS_SECONDS (or when
    `fresh`: a resolution failed). A container that has just started mounts its own
    file systems, and reading the mount table then waits on the kernel's mount lock
    (~0.5 ms a read and as much a close, measured): a start's end measures its
    container right then."""
    global _mounts
    now = time.monotonic()
    if not fresh and _mounts is not None and _mounts[0] == MOUNTINFO and now < _mounts[1]:
        return _mounts[2]
    with open(MOUNTINFO) as fh:
        mounts = parse_mountinfo(fh.read())
    _mounts = (MOUNTINFO, now + MOUNTS_SECONDS, mounts)
    return mounts


MOUNTS_SECONDS = 60.0
_mounts: tuple[str, float, list[Mount]] | None = None


def _resolve_all(
    pid: int, mine: dict[frozenset[str], tuple[str, ...]], mounts: list[Mount]
) -> tuple[dict[str, str], list[frozenset[str]]]:
    """({controller: directory}, the hierarchies no mount reaches)."""
    out: dict[str, str] = {}
    missing: list[frozenset[str]] = []
    for hierarchy, rel in mine.items():
        found = resolve(mounts, hierarchy, rel, pid)
        if found is None:
            missing.append(hierarchy)
            continue
        if not hierarchy:
            out[""] = found
        for ctl in hierarchy:
            out[ctl.removeprefix("name=")] = found
    return out, missing


_resolved: dict[tuple[int, str, str], dict[str, str]] = {}


_logged: set[tuple[int, str]] = set()


def _once(pid: int, what: str, reason: str) -> None:
    """Log a figure that cannot be read once per process and file, not every 2 s."""
    if (pid, what) in _logged:
        return
    if len(_logged) > 10000:
        _logged.clear()
    _logged.add((pid, what))
    log.warning("cgroup figure unknown pid=%s file=%s: %s", pid, what, reason)


def file_for(pid: int, name: str, where: dict[str, str] | None = None) -> str:
    """Path of cgroup file `name` ("memory.limit_in_bytes") of process `pid`
    (`where`: its `paths()`, when the caller has them already). Raises
    CgroupNotFound when no mount here reaches the controller's group."""
    found = paths(pid) if where is None else where
    ctl = name.split(".", 1)[0]
    if layout() == "v2":
        ctl = ""
    elif ctl == "cpu" and "cpu" not in found:
        ctl = "cpuacct"
    if ctl not in found:
        raise CgroupNotFound(
            errno.ENOENT, f"the {ctl or 'unified'} cgroup of pid {pid} is not reachable here", name
        )
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


def memory(pid: int, where: dict[str, str] | None = None) -> tuple[int | None, int | None]:
    """(mem, swap) in bytes, None where unknown; mem excludes page cache as Proxmox
    reports it."""
    try:
        where = paths(pid) if where is None else where
    except OSError:
        return None, None

    def value(name: str) -> str:
        return read(file_for(pid, name, where))

    try:
        if layout() == "v2":
            mem = int(value("memory.current"))
            stat = _kv(value("memory.stat"))
            mem = max(0, mem - stat.get("file", 0))
        else:
            usage = int(value("memory.usage_in_bytes"))
            stat = _kv(value("memory.stat"))
            mem = max(0, usage - stat.get("total_cache", 0))
    except (OSError, ValueError) as err:
        _once(pid, "memory", str(err))
        return None, None
    try:
        if layout() == "v2":
            return mem, int(value("memory.swap.current"))
        return mem, max(0, int(value("memory.memsw.usage_in_bytes")) - usage)
    except (OSError, ValueError):
        # No swap accounting on this kernel (swapaccount=0): no swap is used through it.
        return mem, 0


def cpu_usage_ns(pid: int, where: dict[str, str] | None = None) -> int | None:
    """Total CPU time of the group in ns, None when unknown."""
    try:
        where = paths(pid) if where is None else where
        if layout() == "v2":
            return _kv(read(file_for(pid, "cpu.stat", where))).get("usage_usec", 0) * 1000
        return int(read(file_for(pid, "cpuacct.usage", where)))
    except (OSError, ValueError) as err:
        _once(pid, "cpu", str(err))
        return None


def freezer_state(pid: int) -> str:
    """ "FROZEN", "FREEZING" or "THAWED" (v1 freezer / v2 cgroup.freeze)."""
    try:
        if layout() == "v2":
            return "FROZEN" if read(file_for(pid, "cgroup.freeze")) == "1" else "THAWED"
        return read(file_for(pid, "freezer.state"))
    except OSError as err:
        _once(pid, "freezer", str(err))
        return "THAWED"


def read_raw(path: str) -> bytes:
    """A cgroup or /proc file's bytes through a raw descriptor: the node's round
    reads several per container, and text I/O costs about twice as much."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class GroupFiles:
    """The figure files of one process's groups, resolved once: a container's init
    stays in its groups for life, so the round re-reads the same files without
    parsing /proc/PID/cgroup or mountinfo again. None: no mount here reaches it
    (the figure is then unknown)."""

    pid: int
    v2: bool
    mem: str | None  # memory.usage_in_bytes (v1) / memory.current (v2)
    mem_stat: str | None  # memory.stat
    swap: str | None  # memory.memsw.usage_in_bytes (v1) / memory.swap.current (v2)
    cpu: str | None  # cpuacct.usage (v1) / cpu.stat (v2)
    freezer: str | None  # freezer.state (v1) / cgroup.freeze (v2)


def group_files(pid: int, where: dict[str, str] | None = None) -> GroupFiles:
    """Resolve `pid`'s figure files (FileNotFoundError when it is gone)."""
    where = paths(pid) if where is None else where
    v2 = layout() == "v2"

    def find(name: str) -> str | None:
        try:
            return file_for(pid, name, where)
        except CgroupNotFound as err:
            _once(pid, name, str(err))
            return None

    if v2:
        names = ("memory.current", "memory.stat", "memory.swap.current", "cpu.stat",
                 "cgroup.freeze")  # fmt: skip
    else:
        names = ("memory.usage_in_bytes", "memory.stat", "memory.memsw.usage_in_bytes",
                 "cpuacct.usage", "freezer.state")  # fmt: skip
    return GroupFiles(pid, v2, *(find(n) for n in names))


@dataclass(frozen=True)
class Figures:
    mem: int | None  # bytes in use, page cache excluded (None: unknown)
    swap: int | None
    cpu_ns: int | None  # total CPU time of the group
    freezer: str  # "THAWED", "FREEZING", "FROZEN"


def read_figures(files: GroupFiles) -> Figures:
    """Memory, swap, CPU time and freezer state of one group from its resolved files,
    with the semantics of memory(), cpu_usage_ns() and freezer_state()."""
    pid = files.pid
    mem = swap = cpu = None
    try:
        if files.mem is None or files.mem_stat is None:
            raise CgroupNotFound(errno.ENOENT, "memory cgroup not reachable")
        usage = int(read_raw(files.mem))
        cache = _stat_field(read_raw(files.mem_stat), b"file" if files.v2 else b"total_cache")
        mem = max(0, usage - cache)
        try:
            if files.swap is None:
                raise CgroupNotFound(errno.ENOENT, "no swap accounting")
            raw = int(read_raw(files.swap))
            swap = raw if files.v2 else max(0, raw - usage)
        except (OSError, ValueError):
            swap = 0  # no swap accounting on this kernel: none is used through it
    except (OSError, ValueError) as err:
        _once(pid, "memory", str(err))
    try:
        if files.cpu is None:
            raise CgroupNotFound(errno.ENOENT, "cpu cgroup not reachable")
        data = read_raw(files.cpu)
        cpu = _stat_field(data, b"usage_usec") * 1000 if files.v2 else int(data)
    except (OSError, ValueError) as err:
        _once(pid, "cpu", str(err))
    state = "THAWED"
    try:
        if files.freezer is not None:
            data = read_raw(files.freezer).strip()
            state = ("FROZEN" if data == b"1" else "THAWED") if files.v2 else data.decode()
    except OSError as err:
        _once(pid, "freezer", str(err))
    return Figures(mem, swap, cpu, state)


def _stat_field(data: bytes, key: bytes) -> int:
    """One "key value" line of memory.stat / cpu.stat (0 when absent)."""
    buf = b"\n" + data
    at = buf.find(b"\n" + key + b" ")
    if at < 0:
        return 0
    start = at + len(key) + 2
    end = buf.find(b"\n", start)
    return int(buf[start : end if end >= 0 else None])


def proc_start(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (None when it is gone)."""
    try:
        return int(read_raw(f"/proc/{pid}/stat").rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def host_uptime() -> float:
    with open("/proc/uptime") as fh:
        return float(fh.read().split()[0])


def uptime_since(ticks: int | None, now: float) -> int:
    """Seconds since a process that started at `ticks` (host uptime `now`)."""
    if ticks is None:
        return 0
    return max(0, int(now - ticks / _CLK_TCK))


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_kv(text: str) -> dict[str, int]:
    """ "key value" lines (memory.stat, cpu.stat) → {key: int}."""
    return _kv(text)


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
    """CPU fraction between two status reads (Proxmox's `cpu`: 1.0 = one full host).

    The node's round samples (`keep`); an on-demand read (status/current) measures
    against the round's last sample without moving it, so asking often does not
    shrink the round's window. Windows shorter than MIN_WINDOW repeat the last figure.
    """

    MIN_WINDOW = 0.5

    def __init__(self) -> None:
        self._last: dict[int, tuple[float, int]] = {}
        self._frac: dict[int, float] = {}

    def sample(self, key: int, usage_ns: int, cpus: int, *, keep: bool = True) -> float:
        now = time.monotonic()
        prev = self._last.get(key)
        if prev is None or now <= prev[0] or usage_ns < prev[1]:
            self._last[key] = (now, usage_ns)
            self._frac.pop(key, None)
            return 0.0
        if now - prev[0] < self.MIN_WINDOW:
            return self._frac.get(key, 0.0)  # too short to say: the last figure
        frac = max(0.0, (usage_ns - prev[1]) / 1e9 / (now - prev[0]) / max(1, cpus))
        if keep:
            self._last[key] = (now, usage_ns)
            self._frac[key] = frac
        return frac

    def forget(self, key: int) -> None:
        self._last.pop(key, None)
        self._frac.pop(key, None)
