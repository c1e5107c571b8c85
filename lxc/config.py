"""Container config keys, declared once with Proxmox's names and formats (pct.conf).

The same declarations validate API input, render the API schema and tell the
common flow which keys a running container takes at once (`hotplug=True`)
and which wait for the next start (`hotplug=False`, Proxmox's "pending").
Checked against Proxmox's `POST /nodes/{node}/lxc` schema.
"""

from __future__ import annotations

import re
from typing import Any

from corral.cluster import schema
from corral.cluster.errors import ParamError
from corral.cluster.schema import (
    FORMATS,
    Param,
    PropertyFormat,
    Schema,
    ignored,
    indexed,
    unsupported,
)

MAX_NET = 32
MAX_MP = 256

ARCHES = ("amd64", "i386", "arm64", "armhf", "riscv32", "riscv64")
OSTYPES = (
    "debian",
    "devuan",
    "ubuntu",
    "centos",
    "fedora",
    "opensuse",
    "archlinux",
    "alpine",
    "gentoo",
    "nixos",
    "unmanaged",
)
LOCKS = (
    "backup",
    "create",
    "destroyed",
    "disk",
    "fstrim",
    "migrate",
    "mounted",
    "rollback",
    "snapshot",
    "snapshot-delete",
)
MOUNT_OPTIONS = (
    r"(discard|lazytime|noatime|nodev|noexec|nosuid)"
    r"(;(discard|lazytime|noatime|nodev|noexec|nosuid))*"
)
# Interface names inside the container end up in lxc.conf and in `ip` calls.
IFNAME = r"[A-Za-z0-9][-_.A-Za-z0-9]{0,14}"


_ip4_config = schema.cidr_or(4, "dhcp", "manual")
_ip6_config = schema.cidr_or(6, "auto", "dhcp", "manual")


def _mp_path(text: str) -> None:
    if not text.startswith("/") or "\0" in text or "," in text:
        raise ValueError("mount point must be an absolute path")
    if any(part == ".." for part in text.split("/")):
        raise ValueError("mount point path must not contain '..'")
    if not re.fullmatch(r"/[A-Za-z0-9._\-+/@:]*", text):
        raise ValueError("mount point path contains unsupported characters")


FORMATS.setdefault("pve-lxc-ipv4-config", _ip4_config)
FORMATS.setdefault("pve-lxc-ipv6-config", _ip6_config)
FORMATS.setdefault("corral-mp-path", _mp_path)
FORMATS.setdefault("corral-lxc-volume", schema.check_volume_or_new)

_BOOL = Param("boolean", optional=True)
_SIZE = Param("string", "Volume size (read only).", optional=True, pattern=schema.SIZE_PATTERN)
# rootfs and mpN describe a volume the same way
_VOLUME = Param("string", "Volume, or STORAGE:SIZE_IN_GiB to allocate.", format="corral-lxc-volume")

NET = PropertyFormat(
    {
        "name": Param("string", "Name of the network device inside the container.", pattern=IFNAME),
        "bridge": Param("string", "Bridge to attach to.", optional=True, pattern=IFNAME),
        "hwaddr": Param(
            "string", "MAC address (generated if unset).", optional=True, format="mac-addr"
        ),
        "ip": Param(
            "string",
            "IPv4 address in CIDR, dhcp or manual.",
            optional=True,
            format="pve-lxc-ipv4-config",
        ),
        "gw": Param("string", "Default IPv4 gateway.", optional=True, format="ipv4"),
        "ip6": Param(
            "string",
            "IPv6 address in CIDR, auto, dhcp or manual.",
            optional=True,
            format="pve-lxc-ipv6-config",
        ),
        "gw6": Param("string", "Default IPv6 gateway.", optional=True, format="ipv6"),
        "tag": schema.NIC_TAG,
        "rate": schema.NIC_RATE,
        "mtu": Param("integer", "Maximum transfer unit.", optional=True, minimum=64, maximum=65535),
        "firewall": Param("boolean", "Use this interface's firewall rules.", optional=True),
        "link_down": Param("boolean", "Whether the interface is disconnected.", optional=True),
        "type": Param("string", "Network interface type.", optional=True, enum=("veth",)),
    }
)

# rootfs and mpN end with the same mount flags (the keys' order is kept as declared)
_MOUNT_TAIL = {
    "acl": _BOOL,
    "quota": _BOOL,
    "replicate": _BOOL,
    "shared": _BOOL,
    "mountoptions": Param("string", optional=True, pattern=MOUNT_OPTIONS),
}

ROOTFS = PropertyFormat(
    {"volume": _VOLUME, "size": _SIZE, "ro": _BOOL, **_MOUNT_TAIL},
    default_key="volume",
)

MP = PropertyFormat(
    {
        "volume": _VOLUME,
        "mp": Param("string", "Path inside the container.", format="corral-mp-path"),
        "size": _SIZE,
        "ro": _BOOL,
        "backup": _BOOL,
        **_MOUNT_TAIL,
    },
    default_key="volume",
)

FEATURES = PropertyFormat(
    {
        "nesting": _BOOL,
        "keyctl": _BOOL,
        "fuse": _BOOL,
        "mount": Param(
            "string",
            "Allowed filesystem types (fstype;fstype).",
            optional=True,
            pattern=r"[a-z0-9_]+(;[a-z0-9_]+)*",
        ),
        "mknod": _BOOL,
        "force_rw_sys": _BOOL,
    }
)

CONFIG: dict[str, Param] = {
    "hostname": Param(
        "string",
        "Set a host name for the container.",
        optional=True,
        format="dns-name",
        hotplug=False,
    ),
    "memory": Param(
        "integer", "Amount of RAM for the container in MB.", optional=True, minimum=16, default=512
    ),
    "swap": Param(
        "integer", "Amount of SWAP for the container in MB.", optional=True, minimum=0, default=512
    ),
    "cores": Param(
        "integer",
        "The number of cores assigned to the container.",
        optional=True,
        minimum=1,
        maximum=8192,
    ),
    "cpulimit": Param(
        "number",
        "Limit of CPU usage (0 = unlimited).",
        optional=True,
        minimum=0,
        maximum=8192,
        default=0,
    ),
    "cpuunits": Param(
        "integer", "CPU weight.", optional=True, minimum=0, maximum=500000, default=1024
    ),
    # Not a Proxmox key (Proxmox users set lxc.cgroup2.pids.max by hand): a fork
    # bomb inside one container must not exhaust the node's pids.
    "pidslimit": Param(
        "integer",
        "Maximum number of processes in the container (0 = unlimited). corral extension.",
        optional=True,
        minimum=0,
        maximum=4194304,
        default=0,
    ),
    "rootfs": Param(
        "string", "Use volume as container root.", optional=True, format=ROOTFS, hotplug=False
    ),
    **indexed(
        "mp",
        MAX_MP,
        Param(
            "string",
            "Use volume as container mount point.",
            optional=True,
            format=MP,
            hotplug=False,
        ),
    ),
    **indexed(
        "net",
        MAX_NET,
        Param(
            "string",
            "Specifies network interfaces for the container.",
            optional=True,
            format=NET,
            hotplug=False,
        ),
    ),
    "nameserver": Param(
        "string", "DNS server IP addresses.", optional=True, format="corral-ip-list", hotplug=False
    ),
    "searchdomain": Param(
        "string", "DNS search domains.", optional=True, format="corral-dns-list", hotplug=False
    ),
    "onboot": Param("boolean", "Start at system boot.", optional=True, default=0),
    "startup": Param(
        "string", "Startup and shutdown behavior.", optional=True, format="pve-startup-order"
    ),
    "unprivileged": Param(
        "boolean",
        "Run as unprivileged user (user namespace).",
        optional=True,
        default=0,
        hotplug=False,
    ),
    "features": Param(
        "string",
        "Allow access to advanced features.",
        optional=True,
        format=FEATURES,
        hotplug=False,
    ),
    "ostype": Param("string", "OS type.", optional=True, enum=OSTYPES, hotplug=False),
    "arch": Param(
        "string",
        "OS architecture type.",
        optional=True,
        enum=ARCHES,
        default="amd64",
        hotplug=False,
    ),
    "description": Param(
        "string",
        "Description, shown in the web interface.",
        optional=True,
        format="multiline",
        max_length=8192,
    ),
    "tags": Param(
        "string", "Tags of the container (meta information).", optional=True, format="pve-tag-list"
    ),
    "protection": Param("boolean", "Prevent removal of the container.", optional=True, default=0),
    "lock": Param("string", "Lock/unlock the container.", optional=True, enum=LOCKS),
    # Create-only parameters (the common flow keeps them out of the stored config).
    "ostemplate": Param(
        "string",
        "The OS template or backup file.",
        optional=True,
        format="pve-volume-id",
        max_length=255,
    ),
    "password": Param("string", "Sets root password inside container.", optional=True, secret=True),
    "ssh-public-keys": Param(
        "string",
        "Setup public SSH keys (one key per line, OpenSSH format).",
        optional=True,
        secret=True,
        format="multiline",
        max_length=16384,
    ),
    "storage": Param("string", "Default Storage.", optional=True, format="pve-storage-id"),
}

# Keys Proxmox defines that corral does not implement (corral.cluster.schema.ignored):
# accepted without effect (their harmless values), or refused with the reason.
_CONSOLE = "corral's console attaches to the container's /dev/console"
PVE_ONLY: dict[str, Param] = {
    "cmode": ignored("string", "Console mode.", _CONSOLE, enum=("shell", "console", "tty")),
    "console": ignored("boolean", "Attach a console device.", _CONSOLE, noop=(1,)),
    "tty": ignored("integer", "Number of ttys.", _CONSOLE, minimum=0, maximum=6),
    "debug": ignored("boolean", "More verbose start.", "liblxc logs at corrald's log level"),
    **indexed(
        "dev", 256, unsupported("string", "Device passthrough.", "not implemented in corral")
    ),
    "entrypoint": ignored(
        "string", "Command to run as init.", "corral boots /sbin/init", noop=("/sbin/init",)
    ),
    "env": unsupported("string", "Init environment.", "corral sets no init environment"),
    "hookscript": unsupported("string", "Hook script.", "corral runs no hook scripts"),
    "template": ignored("boolean", "Enable/disable Template.", "use POST .../template", noop=(0,)),
    "timezone": unsupported("string", "Time zone.", "corral leaves the container's time zone"),
    **indexed(
        "unused", 256, unsupported("string", "Unused volume.", "corral frees detached volumes")
    ),
}
CONFIG.update({k: v for k, v in PVE_ONLY.items() if k not in CONFIG})

SCHEMA = Schema(CONFIG)

# What a running container takes without a restart (DriverInfo.live_config).
LIVE_KEYS = frozenset(k for k, p in CONFIG.items() if p.hotplug) - {
    "ostemplate",
    "password",
    "ssh-public-keys",
    "storage",
}
# Keys the driver itself writes into the running container's cgroups.
CGROUP_KEYS = frozenset({"memory", "swap", "cores", "cpulimit", "cpuunits", "pidslimit"})


def value(config: dict[str, Any], key: str) -> Any:
    """A key's value or its declared default."""
    if key in config and config[key] is not None:
        return config[key]
    return CONFIG[key].default


def parse_net(config: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """{index: parsed net property} for each `netN` present, in index order."""
    out: dict[int, dict[str, Any]] = {}
    for i in range(MAX_NET):
        text = config.get(f"net{i}")
        if text:
            out[i] = _parse(f"net{i}", NET, text)
    return out


def parse_mps(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"rootfs"|"mpN": parsed property} for each volume present."""
    out: dict[str, dict[str, Any]] = {}
    if config.get("rootfs"):
        out["rootfs"] = _parse("rootfs", ROOTFS, config["rootfs"])
    for i in range(MAX_MP):
        text = config.get(f"mp{i}")
        if text:
            out[f"mp{i}"] = _parse(f"mp{i}", MP, text)
    return out


def parse_features(config: dict[str, Any]) -> dict[str, Any]:
    text = config.get("features")
    return _parse("features", FEATURES, text) if text else {}


def print_volume(key: str, values: dict[str, Any]) -> str:
    return (ROOTFS if key == "rootfs" else MP).print(values)


def _parse(key: str, fmt: PropertyFormat, text: str) -> dict[str, Any]:
    try:
        return fmt.parse(text)
    except ValueError as err:
        raise ParamError.one(key, str(err)) from None
