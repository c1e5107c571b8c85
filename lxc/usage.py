"""Disk usage of a running container's root volume, as Proxmox reports `disk`.

A root volume that is a filesystem of its own (an LVM or RBD image, a ZFS
dataset) answers with statvfs. A root that is a directory on a shared
filesystem (a `dir` storage's subvol, a btrfs subvolume) would answer
statvfs with the whole host filesystem's usage, so its files are counted
instead: blocks allocated, each inode once, never descending into other
mounts (the container's /proc, /dev, mount points). Counting walks the tree,
so the figure is kept for CACHE_SECONDS per container.
"""

from __future__ import annotations

import os
import stat
import threading
import time

CACHE_SECONDS = 30.0
# (init pid, its start ticks) -> (when counted, bytes): a reused PID is another key.
_cache: dict[tuple[int, int | None], tuple[float, int]] = {}
_lock = threading.Lock()
_purged = [float("-inf")]  # when dead containers' counts were last forgotten


class Budget:
    """Seconds of tree walking one round may still spend on stale figures."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds


def root_mounts(pid: int) -> tuple[str, set[str]]:
    """(the root mount's source root within its filesystem, the other mount points)."""
    root = "/"
    others: set[str] = set()
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            # mountinfo: id parent major:minor ROOT MOUNTPOINT options ...
            if len(fields) < 5:
                continue
            source_root, point = _unescape(fields[3]), _unescape(fields[4])
            if point == "/":
                root = source_root  # the last mount on "/" is the one in effect
            else:
                others.add(point)
    return root, others


def _unescape(text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return (
        text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def tree_bytes(top: str, skip: set[str]) -> int:
    """Allocated bytes under `top`: one filesystem, each inode once, `skip` paths left out."""
    try:
        # stat, not lstat: /proc/PID/root is a magic link to the container's root.
        first = os.stat(top)
    except OSError:
        return 0
    dev = first.st_dev
    seen: set[int] = set()
    total = 0
    stack = [top]
    while stack:
        path = stack.pop()
        try:
            entries = os.scandir(path)
        except OSError:
            continue  # vanished or unreadable: counted as nothing
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if st.st_dev != dev:
                    continue
                if st.st_nlink > 1:
                    if st.st_ino in seen:
                        continue
                    seen.add(st.st_ino)
                total += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode) and entry.path not in skip:
                    stack.append(entry.path)
    return total + first.st_blocks * 512


def root_used_bytes(
    pid: int, budget: Budget | None = None, *, born: int | None = None, first: bool = True
) -> int | None:
    """Bytes used on the root volume of the container whose init is `pid` (started
    at `born` ticks). With a spent `budget`, a stale count is answered as it is (a
    first one is made unless `first` is False: then None, not counted yet): the
    budget alone bounds the walking."""
    top = f"/proc/{pid}/root"
    now = time.monotonic()
    key = (pid, born)
    with _lock:
        hit = _cache.get(key)
        if hit is not None and (
            now - hit[0] < CACHE_SECONDS or (budget is not None and budget.left <= 0)
        ):
            return hit[1]  # a counted tree: not even its mountinfo read again
    if hit is None and not first:
        return None
    try:
        source_root, others = root_mounts(pid)
    except OSError:
        return 0
    if source_root == "/":
        try:
            st = os.statvfs(top)
        except OSError:
            return 0
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    skip = {top + p for p in others}
    used = tree_bytes(top, skip)
    done = time.monotonic()
    if budget is not None:
        budget.left -= done - now
    with _lock:
        # Forget the counts of containers gone, now and then (an old count of a live
        # one stays usable).
        if done - _purged[0] > CACHE_SECONDS:
            _purged[0] = done
            for old in [k for k, (t, _) in _cache.items() if done - t > CACHE_SECONDS]:
                if not os.path.exists(f"/proc/{old[0]}"):
                    del _cache[old]
        _cache[key] = (done, used)
    return used
