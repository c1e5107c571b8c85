"""Host facts for GET /nodes/{node}/status, with Proxmox's field names.

Hardware virtualization is usable only when the CPU advertises VT-x/AMD-V
(vmx/svm) AND /dev/kvm opens and answers KVM_GET_API_VERSION with 12: some
hosts (nested or paravirtual KVM) have a /dev/kvm that cannot run ordinary
guests, and then VMs must run under TCG (`kvm: 0`).
"""

from __future__ import annotations

import fcntl
import os
import platform
import threading
import time
from typing import Any

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12

_cpu_sample: dict[str, tuple[float, float]] = {}
_cpu_lock = threading.Lock()


def parse_cpuinfo(text: str) -> dict[str, Any]:
    cpus = 0
    model = ""
    sockets: set[str] = set()
    flags: set[str] = set()
    mhz = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            cpus += 1
        elif key == "model name" and not model:
            model = value
        elif key == "physical id":
            sockets.add(value)
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and not mhz:
            mhz = value
    return {
        "cpus": cpus,
        "model": model,
        "sockets": max(1, len(sockets)),
        "cores": cpus // max(1, len(sockets)),
        "mhz": mhz,
        "flags": " ".join(sorted(flags)),
        "_flags": flags,
    }


def kvm_usable(flags: set[str], dev: str = "/dev/kvm") -> tuple[bool, str]:
    if not flags & {"vmx", "svm"}:
        return False, "the CPU does not advertise VT-x/AMD-V (no vmx or svm flag)"
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return False, f"{dev} cannot be opened: {err.strerror}"
    try:
        version = fcntl.ioctl(fd, KVM_GET_API_VERSION)
    except OSError as err:
        return False, f"{dev} does not answer KVM_GET_API_VERSION: {err.strerror}"
    finally:
        os.close(fd)
    if version != KVM_API_VERSION:
        return False, f"{dev} reports KVM API version {version}, expected {KVM_API_VERSION}"
    return True, ""


def kvm_device_problem(dev: str = "/dev/kvm") -> str | None:
    """What is wrong with `dev`'s owner or mode compared with what Debian's udev rule
    sets (group kvm, mode 0660), or None. With root:root 0600 libvirtd judges its
    QEMU capability cache stale on every look-up and re-probes QEMU: starts take
    a minute instead of a fraction of a second."""
    import grp
    import stat

    try:
        st = os.stat(dev)
    except FileNotFoundError:
        return None  # no KVM here at all: nothing to set up
    except OSError as err:
        return f"{dev} cannot be examined: {err.strerror}"
    if not stat.S_ISCHR(st.st_mode):
        return f"{dev} is not a character device"
    try:
        kvm_gid: int | None = grp.getgrnam("kvm").gr_gid
    except KeyError:
        kvm_gid = None
    mode = stat.S_IMODE(st.st_mode)
    if kvm_gid is None or st.st_gid != kvm_gid or mode & 0o660 != 0o660:
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        if _is_mount_point(dev):
            fix = "it is bound in from the host outside this container: fix it there"
        else:
            fix = f"fix with: chgrp kvm {dev}; chmod 0660 {dev} (or run install.sh again)"
        return (
            f"{dev} is group {group} mode {mode:04o}, not group kvm mode 0660 as udev "
            f"would leave it: libvirt re-probes QEMU at every VM start (slow starts); {fix}"
        )
    return None


def cgroups_above_namespace(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """A cgroup mount whose root lies above this process's cgroup namespace root
    ("/.."): the host is a container with /sys/fs/cgroup bound in from outside."""
    try:
        with open(mountinfo) as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if right.split()[:1] in (["cgroup"], ["cgroup2"]) and len(fields) > 3:
                    if fields[3] == "/.." or fields[3].startswith("/../"):
                        return True
    except OSError:
        pass
    return False


VM_RECONNECT_LIMIT = (
    "this host is a container whose cgroup mounts lie above its cgroup namespace "
    "(/sys/fs/cgroup bound in from the outer host): libvirt (9.0) cannot find a running "
    "VM's cgroup again when it restarts ('/../machine/...' joined to the mount) and stops "
    "the VM, so VMs do not survive a restart of libvirtd (or of corrald with "
    "qemu:///embed); mount cgroups inside the container (lxc.mount.auto = cgroup:rw) "
    "to lift this"
)


def _is_mount_point(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    try:
        with open(mountinfo) as fh:
            return any(line.split()[4] == path for line in fh if len(line.split()) > 4)
    except OSError:
        return False


def parse_meminfo(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts:
            out[key.strip()] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_usage() -> float:
    """Fraction of all CPUs busy since the previous call (Proxmox's `cpu`)."""
    fields = _read("/proc/stat").splitlines()[0].split()[1:]
    values = [float(x) for x in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    total = sum(values[:8])
    with _cpu_lock:
        prev = _cpu_sample.get("all")
        _cpu_sample["all"] = (total, idle)
    if prev is None or total <= prev[0]:
        return 0.0
    return round(max(0.0, 1.0 - (idle - prev[1]) / (total - prev[0])), 4)


def iowait() -> float:
    """Fraction of CPU time waiting for I/O since the previous call (Proxmox's `wait`)."""
    values = [float(x) for x in _read("/proc/stat").splitlines()[0].split()[1:]]
    total, wait = sum(values[:8]), values[4] if len(values) > 4 else 0.0
    with _cpu_lock:
        prev = _cpu_sample.get("wait")
        _cpu_sample["wait"] = (total, wait)
    if prev is None or total <= prev[0]:
        return 0.0
    return round(max(0.0, (wait - prev[1]) / (total - prev[0])), 4)


def net_totals() -> tuple[int, int]:
    """Bytes received and sent by the host's physical-looking interfaces (not lo, not
    guest veths/taps, not bridges: they would count a guest's traffic twice)."""
    rx = tx = 0
    for line in _read("/proc/net/dev").splitlines()[2:]:
        name, _, rest = line.partition(":")
        name = name.strip()
        if name == "lo" or name.startswith(("veth", "tap", "fwpr", "fwln", "vmbr", "br")):
            continue
        fields = rest.split()
        if len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def host_status(root_path: str = "/") -> dict[str, Any]:
    cpu = parse_cpuinfo(_read("/proc/cpuinfo"))
    flags = cpu.pop("_flags")
    hvm, reason = kvm_usable(flags)
    mem = parse_meminfo(_read("/proc/meminfo"))
    total, free = mem.get("MemTotal", 0), mem.get("MemAvailable", mem.get("MemFree", 0))
    stv = os.statvfs(root_path if os.path.exists(root_path) else "/")
    uptime = float((_read("/proc/uptime").split() or ["0"])[0])
    uname = platform.uname()
    return {
        "cpu": cpu_usage(),
        "wait": iowait(),
        **dict(zip(("netin", "netout"), net_totals(), strict=True)),
        "cpuinfo": {
            **{k: v for k, v in cpu.items() if k != "flags"},
            "hvm": int(hvm),
            "user_hz": os.sysconf("SC_CLK_TCK"),
            "flags": cpu["flags"],
        },
        "hvm_reason": reason,
        "memory": {"total": total, "used": total - free, "free": free},
        "swap": {
            "total": mem.get("SwapTotal", 0),
            "used": mem.get("SwapTotal", 0) - mem.get("SwapFree", 0),
            "free": mem.get("SwapFree", 0),
        },
        "rootfs": {
            "total": stv.f_blocks * stv.f_frsize,
            "used": (stv.f_blocks - stv.f_bfree) * stv.f_frsize,
            "avail": stv.f_bavail * stv.f_frsize,
            "free": stv.f_bfree * stv.f_frsize,
        },
        "loadavg": [f"{x:.2f}" for x in os.getloadavg()],
        "uptime": int(uptime),
        "kversion": f"{uname.system} {uname.release} {uname.version}",
        "pveversion": "corral/0.1.0",
        "time": int(time.time()),
    }
