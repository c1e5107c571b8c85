"""lxc.conf rendered from a container config by pure functions, one per section.

Nothing here touches the system: the driver gathers node facts (paths, veth
names, generated MACs, host CPU count, cgroup layout) into `Facts` and the
functions below turn config + facts into `key = value` lines. Golden files
in tests/golden/lxc pin the output.

Debian's /usr/share/lxc/config/common.conf is not included: it sets
`lxc.seccomp.profile`, which this LXC build (no seccomp, no apparmor)
rejects, so the common section is written out here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from corral.cluster.errors import ParamError
from corral.lxc import config as cfg

Lines = list[tuple[str, str]]

# Proxmox maps an unprivileged container's ids 0..65535 to 100000..165535.
IDMAP_BASE = 100000
IDMAP_SIZE = 65536
# CPU quota period for cpulimit (Proxmox's: 100 ms).
CFS_PERIOD_US = 100000


@dataclass(frozen=True)
class Facts:
    """What the node knows that the config does not say."""

    vmid: int
    lxcpath: str
    rootfs_path: str
    host_cpus: int = 1
    cgroup: str = "v1"  # "v1" (hybrid, as here) or "v2"
    mounts: dict[str, str] = field(default_factory=dict)  # "mpN" -> host directory
    hwaddrs: dict[int, str] = field(default_factory=dict)  # net index -> MAC if unset
    # The bridges have VLAN filtering on: `tag` becomes lxc.net.N.veth.vlan.id.
    vlan_filtering: bool = False


def render(config: dict[str, Any], facts: Facts) -> str:
    """The whole lxc.conf text."""
    lines: Lines = [("lxc.uts.name", _hostname(config, facts))]
    for section in (common, rootfs, idmap, cgroup_limits, features, mounts, network):
        lines += section(config, facts)
    return "".join(f"{key} = {value}\n" for key, value in lines)


def _hostname(config: dict[str, Any], facts: Facts) -> str:
    return str(config.get("hostname") or f"CT{facts.vmid}")


def common(config: dict[str, Any], facts: Facts) -> Lines:
    arch = {"amd64": "x86_64", "i386": "i686", "arm64": "aarch64", "armhf": "armv7l"}
    lines: Lines = [
        ("lxc.arch", arch.get(str(cfg.value(config, "arch")), str(cfg.value(config, "arch")))),
        ("lxc.tty.dir", "lxc"),
        ("lxc.tty.max", "2"),
        ("lxc.pty.max", "1024"),
        ("lxc.signal.halt", _halt_signal(config)),
        ("lxc.log.file", f"{facts.lxcpath}/{facts.vmid}/lxc.log"),
        ("lxc.console.logfile", f"{facts.lxcpath}/{facts.vmid}/console.log"),
        ("lxc.cap.drop", "mac_admin mac_override sys_time sys_module sys_rawio"),
        ("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed"),
        ("lxc.autodev", "1"),
        # liblxc SIGKILLs the container's init when its monitor dies (default
        # SIGKILL): a crashed or killed monitor would take the guest with it. The
        # guest keeps running instead, as a VM outlives libvirtd; orphans.py finds,
        # reports and stops it.
        ("lxc.monitor.signal.pdeath", "0"),
    ]
    key = "lxc.cgroup2" if facts.cgroup == "v2" else "lxc.cgroup"
    lines.append((f"{key}.devices.deny", "a"))
    for dev in _DEVICES:
        lines.append((f"{key}.devices.allow", dev))
    return lines


# systemd halts on SIGRTMIN+3 (SIGPWR only starts sigpwr.target); busybox and
# sysvinit-style inits power off on SIGPWR.
_SYSTEMD_OSTYPES = frozenset({"debian", "ubuntu", "centos", "fedora", "opensuse", "archlinux"})


def _halt_signal(config: dict[str, Any]) -> str:
    return "SIGRTMIN+3" if config.get("ostype") in _SYSTEMD_OSTYPES else "SIGPWR"


# /dev/null, zero, full, random, urandom, tty, console, ptmx, pts, fuse (same as LXC's common.conf).
_DEVICES = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
)


def rootfs(config: dict[str, Any], facts: Facts) -> Lines:
    _check_path("rootfs", facts.rootfs_path)
    vol = cfg.parse_mps(config).get("rootfs", {})
    lines: Lines = [("lxc.rootfs.path", f"dir:{facts.rootfs_path}")]
    if vol.get("ro"):
        lines.append(("lxc.rootfs.options", "ro"))
    return lines


def idmap(config: dict[str, Any], facts: Facts) -> Lines:
    if not cfg.value(config, "unprivileged"):
        return []
    return [
        ("lxc.idmap", f"u 0 {IDMAP_BASE} {IDMAP_SIZE}"),
        ("lxc.idmap", f"g 0 {IDMAP_BASE} {IDMAP_SIZE}"),
    ]


def cgroup_limits(config: dict[str, Any], facts: Facts) -> Lines:
    """Memory, swap and CPU limits as cgroup files (the same values apply_live writes)."""
    return [(_prefix(facts) + k, v) for k, v in cgroup_values(config, facts).items()]


def _prefix(facts: Facts) -> str:
    return "lxc.cgroup2." if facts.cgroup == "v2" else "lxc.cgroup."


def cgroup_values(config: dict[str, Any], facts: Facts) -> dict[str, str]:
    """{cgroup file: value} for the limits, in the layout of `facts.cgroup`.

    The order matters when writing them live: memory before memory+swap on
    v1 (memsw must never be below memory), so the caller writes in this order
    when growing and reversed when shrinking.
    """
    mem = int(cfg.value(config, "memory")) << 20
    swap = int(cfg.value(config, "swap")) << 20
    cpulimit = float(cfg.value(config, "cpulimit") or 0)
    units = int(cfg.value(config, "cpuunits"))
    cores = config.get("cores")
    out: dict[str, str] = {}
    if facts.cgroup == "v2":
        out["memory.max"] = str(mem)
        out["memory.swap.max"] = str(swap)
        quota = f"{int(cpulimit * CFS_PERIOD_US)}" if cpulimit else "max"
        out["cpu.max"] = f"{quota} {CFS_PERIOD_US}"
        # v2 weight is 1..10000 (default 100); v1 shares default 1024.
        out["cpu.weight"] = str(max(1, min(10000, units * 100 // 1024 if units else 100)))
    else:
        out["memory.limit_in_bytes"] = str(mem)
        out["memory.memsw.limit_in_bytes"] = str(mem + swap)
        out["cpu.cfs_period_us"] = str(CFS_PERIOD_US)
        out["cpu.cfs_quota_us"] = str(int(cpulimit * CFS_PERIOD_US)) if cpulimit else "-1"
        out["cpu.shares"] = str(max(2, units or 1024))
    if cores:
        n = max(1, min(int(cores), facts.host_cpus))
        out["cpuset.cpus"] = "0" if n == 1 else f"0-{n - 1}"
    pids = int(cfg.value(config, "pidslimit") or 0)
    if pids:
        out["pids.max"] = str(pids)
    return out


def features(config: dict[str, Any], facts: Facts) -> Lines:
    feat = cfg.parse_features(config)
    lines: Lines = []
    if feat.get("nesting"):
        # Nested containers need a writable cgroup tree and the real proc/sys.
        lines.append(("lxc.mount.auto", "cgroup:rw:force"))
        lines.append(("lxc.mount.entry", "proc dev/.lxc/proc proc create=dir,optional 0 0"))
        lines.append(("lxc.mount.entry", "sys dev/.lxc/sys sysfs create=dir,optional 0 0"))
    if feat.get("force_rw_sys"):
        lines.append(("lxc.mount.auto", "sys:rw"))
    if feat.get("fuse"):
        key = "lxc.cgroup2" if facts.cgroup == "v2" else "lxc.cgroup"
        lines.append((f"{key}.devices.allow", "c 10:229 rwm"))
        lines.append(("lxc.mount.entry", "/dev/fuse dev/fuse none bind,create=file,optional 0 0"))
    if feat.get("mknod"):
        key = "lxc.cgroup2" if facts.cgroup == "v2" else "lxc.cgroup"
        lines.append((f"{key}.devices.allow", "c *:* rwm"))
    # keyctl and mount= restrict what seccomp/apparmor filter in Proxmox; this
    # build has neither, so the kernel's own rules already apply: no lines.
    return lines


def mounts(config: dict[str, Any], facts: Facts) -> Lines:
    lines: Lines = []
    for key, vol in cfg.parse_mps(config).items():
        if key == "rootfs":
            continue
        host = facts.mounts.get(key)
        if host is None:
            raise ParamError.one(key, "volume is not mounted on this node")
        _check_path(key, host)
        opts = "bind,create=dir" + (",ro" if vol.get("ro") else "")
        lines.append(("lxc.mount.entry", f"{host} {vol['mp'].lstrip('/')} none {opts} 0 0"))
    return lines


def veth_name(vmid: int, index: int) -> str:
    """Host-side veth name, as Proxmox names it."""
    return f"veth{vmid}i{index}"


def network(config: dict[str, Any], facts: Facts) -> Lines:
    lines: Lines = []
    for n, (index, net) in enumerate(cfg.parse_net(config).items()):
        p = f"lxc.net.{n}."
        lines += [(p + "type", "veth"), (p + "veth.pair", veth_name(facts.vmid, index))]
        if net.get("bridge"):
            lines.append((p + "link", net["bridge"]))
        if not net.get("link_down"):
            lines.append((p + "flags", "up"))
        lines.append((p + "name", net["name"]))
        hwaddr = net.get("hwaddr") or facts.hwaddrs.get(index)
        if hwaddr:
            lines.append((p + "hwaddr", hwaddr))
        if net.get("mtu"):
            lines.append((p + "mtu", str(net["mtu"])))
        if net.get("tag"):
            if not facts.vlan_filtering:
                raise ParamError.one(
                    f"net{index}",
                    "VLAN tags need bridge VLAN filtering, which this node does not offer",
                )
            lines.append((p + "veth.vlan.id", str(net["tag"])))
        # Static addresses are set by liblxc in the container's netns before
        # init runs, so any init (busybox, systemd, none) gets them.
        ip, ip6 = net.get("ip"), net.get("ip6")
        if ip and ip not in ("dhcp", "manual"):
            lines.append((p + "ipv4.address", ip))
            if net.get("gw"):
                lines.append((p + "ipv4.gateway", net["gw"]))
        if ip6 and ip6 not in ("auto", "dhcp", "manual"):
            lines.append((p + "ipv6.address", ip6))
            if net.get("gw6"):
                lines.append((p + "ipv6.gateway", net["gw6"]))
    return lines


def _check_path(key: str, path: str) -> None:
    # lxc.conf values are fstab-like: whitespace or newlines would split or inject entries.
    if not path.startswith("/") or not re.fullmatch(r"[A-Za-z0-9._\-+/@:]+", path):
        raise ParamError.one(key, f"unsupported host path '{path}'")
