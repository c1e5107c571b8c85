"""Entering a lab node: run a command with the node's own view of /sys/class/net.

`nsenter --net` keeps the host's /sys (with its cgroup v1 mounts, which liblxc
needs), but that sysfs still lists the host's interfaces, and liblxc looks up
bridges there ("bridge interface doesn't exist"). So, inside the node's private
mount namespace, a sysfs mounted from the node's network namespace is bound
over just the network parts of /sys, then the command is exec'd.

    python -m corral.cluster.labns [--bind SRC DST]... -- ARGV...

`--bind` gives the node its own directory at a path every node shares: the
cluster-wide `local` storage has one path (the first node's), as /var/lib/vz
is one path on every Proxmox host, yet each lab node must have its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

NET_PARTS = ("class/net", "devices/virtual/net")


def _mount(argv: list[str]) -> None:
    subprocess.run(["mount", *argv], check=True, timeout=30)


def main() -> None:
    argv = sys.argv[1:]
    binds: list[tuple[str, str]] = []
    while len(argv) >= 3 and argv[0] == "--bind":
        binds.append((argv[1], argv[2]))
        argv = argv[3:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: python -m corral.cluster.labns [--bind SRC DST]... -- ARGV...")
    for src, dst in binds:
        os.makedirs(src, exist_ok=True)
        os.makedirs(dst, exist_ok=True)
        _mount(["--bind", src, dst])
    fresh = tempfile.mkdtemp(prefix="crl-sysfs-")
    _mount(["-t", "sysfs", "sysfs", fresh])
    try:
        for part in NET_PARTS:
            _mount(["--bind", os.path.join(fresh, part), os.path.join("/sys", part)])
    finally:
        subprocess.run(["umount", "-l", fresh], check=False, timeout=30)
        os.rmdir(fresh)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
