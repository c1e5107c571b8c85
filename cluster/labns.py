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

`--libvirtd ROOT ADDRESS` also starts a real libvirtd for the node (what live
migration needs): a tmpfs on /run and the node's own /etc, /var/lib, /var/log
and /var/cache libvirt dirs from ROOT, listening on ADDRESS over TCP without
auth (the lab network exists only on this machine), then virtlogd and libvirtd.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

NET_PARTS = ("class/net", "devices/virtual/net")


def _mount(argv: list[str]) -> None:
    subprocess.run(["mount", *argv], check=True, timeout=30)


def main() -> None:
    argv = sys.argv[1:]
    binds: list[tuple[str, str]] = []
    libvirtd: tuple[str, str] | None = None
    while len(argv) >= 3 and argv[0] in ("--bind", "--libvirtd"):
        if argv[0] == "--bind":
            binds.append((argv[1], argv[2]))
        else:
            libvirtd = (argv[1], argv[2])
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
    if libvirtd is not None:
        start_libvirtd(*libvirtd)
    os.execvp(argv[0], argv)


LIBVIRTD_CONF = """# written by corral lab: TCP without auth on the lab address only
listen_tls = 0
listen_tcp = 1
listen_addr = "{address}"
auth_tcp = "none"
auth_unix_rw = "none"
"""
# Guests run as root: their disks and kernels live in root-owned test trees.
QEMU_CONF = """user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
"""


def start_libvirtd(root: str, address: str, timeout: float = 30.0) -> None:
    _mount(["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"])
    for sub in ("lock", "libvirt"):
        os.makedirs(f"/run/{sub}", exist_ok=True)
    for name, where in (
        ("etc", "/etc/libvirt"),
        ("lib", "/var/lib/libvirt"),
        ("log", "/var/log/libvirt"),
        ("cache", "/var/cache/libvirt"),
    ):
        own = os.path.join(root, name)
        os.makedirs(own, exist_ok=True)
        os.makedirs(where, exist_ok=True)
        _mount(["--bind", own, where])
    os.makedirs("/var/log/libvirt/qemu", exist_ok=True)
    with open("/etc/libvirt/libvirtd.conf", "w") as f:
        f.write(LIBVIRTD_CONF.format(address=address))
    with open("/etc/libvirt/qemu.conf", "w") as f:
        f.write(QEMU_CONF)
    subprocess.run(["virtlogd", "-d"], check=True, timeout=30)
    subprocess.run(["libvirtd", "-d", "--listen"], check=True, timeout=30)
    deadline = time.monotonic() + timeout
    while not os.path.exists("/run/libvirt/libvirt-sock"):
        if time.monotonic() > deadline:
            raise SystemExit(f"libvirtd did not start within {timeout:.0f} s")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
