"""VM config keys, declared once with Proxmox's names and formats (qm.conf).

The same declarations validate API input, render the API schema and tell
the common flow which keys a running VM takes at once (`LIVE_KEYS`); the
rest waits for the next start (Proxmox's "pending"). Checked against
Proxmox's `POST /nodes/{node}/qemu` schema; a subset of its keys, each one
rendered into the domain XML by corral.kvm.xml_*.

Corral extensions (not Proxmox keys, marked so in their descriptions):
`kernel`, `initrd` and `cmdline` boot a kernel directly (volume IDs, e.g.
`local:snippets/vmlinuz`), where Proxmox would need raw QEMU `args`.
"""

from __future__ import annotations

import re
from typing import Any

from corral.cluster.errors import ParamError
from corral.cluster.schema import (
    FORMATS,
    NIC_RATE,
    NIC_TAG,
    SIZE_PATTERN,
    Param,
    PropertyFormat,
    Schema,
    check_volume_or_new,
    cidr_or,
    ignored,
    indexed,
    new_volume_size,
    unsupported,
)

MAX_NET = 32
MAX_UNUSED = 256
MAX_SERIAL = 4
# Proxmox's bus limits.
BUSES = {"ide": 4, "sata": 6, "scsi": 31, "virtio": 16}
DISK_KEYS = tuple(f"{bus}{i}" for bus, n in BUSES.items() for i in range(n))
EXTENSION = "(corral extension, not a Proxmox key) "

OSTYPES = (
    "other",
    "wxp",
    "w2k",
    "w2k3",
    "w2k8",
    "wvista",
    "win7",
    "win8",
    "win10",
    "win11",
    "l24",
    "l26",
    "solaris",
)
LOCKS = (
    "backup",
    "clone",
    "create",
    "migrate",
    "rollback",
    "snapshot",
    "snapshot-delete",
    "suspending",
    "suspended",
)
NIC_MODELS = frozenset({"virtio", "e1000", "e1000e", "rtl8139", "vmxnet3"})
SCSIHW = ("lsi", "virtio-scsi-pci", "virtio-scsi-single", "megasas", "pvscsi")
VGA_TYPES = (
    "std",
    "cirrus",
    "vmware",
    "qxl",
    "virtio",
    "none",
    "serial0",
    "serial1",
    "serial2",
    "serial3",
)
# QEMU CPU model names, plus Proxmox's x86-64-vN[-AES] levels (see xml_cpu).
CPU_MODEL = r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}"
CPU_FLAGS = r"[+-][a-z0-9_\-.]+(;[+-][a-z0-9_\-.]+)*"
MACHINE = r"(pc|q35|pc-i440fx-\d+(\.\d+)+|pc-q35-\d+(\.\d+)+)(\+pve\d+)?"
BOOT_DEVICE = r"(ide\d|sata\d|scsi\d{1,2}|virtio\d{1,2}|net\d{1,2})"
UUID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


def _disk_file(text: str) -> None:
    """`none`, `cdrom`, `STORAGE:SIZE_IN_GiB` (allocate), `STORAGE:cloudinit` or a volume ID."""
    if text in ("none", "cdrom"):
        return
    storage, _, name = text.partition(":")
    if name == "cloudinit":
        FORMATS["pve-storage-id"](storage)
        return
    check_volume_or_new(text)


_ip4_config = cidr_or(4, "dhcp")
_ip6_config = cidr_or(6, "auto", "dhcp")


def _serial(text: str) -> None:
    # Host devices only by a plain /dev path: the value becomes a QEMU chardev source.
    if text == "socket":
        return
    if not re.fullmatch(r"/dev/[A-Za-z0-9_][A-Za-z0-9_.\-/]*", text) or ".." in text:
        raise ValueError(f"value '{text}' is neither 'socket' nor a /dev path")


def _sshkeys(text: str) -> None:
    from urllib.parse import unquote

    for line in unquote(text).splitlines():
        if line.strip() and not re.match(r"(ssh-|ecdsa-|sk-)[a-z0-9\-@.]+ ", line.strip()):
            raise ValueError("not a list of public SSH keys (one per line, URL-encoded)")


for _name, _fn in {
    "corral-qm-disk-file": _disk_file,
    "pve-ipv4-config": _ip4_config,
    "pve-ipv6-config": _ip6_config,
    "corral-qm-serial": _serial,
    "corral-sshkeys": _sshkeys,
}.items():
    FORMATS.setdefault(_name, _fn)

_BOOL = Param("boolean", optional=True)

DISK = PropertyFormat(
    {
        "file": Param(
            "string",
            "Volume ID, STORAGE:SIZE_IN_GiB to allocate, 'none' (empty cdrom) or "
            "STORAGE:cloudinit (the cloud-init drive).",
            format="corral-qm-disk-file",
        ),
        "size": Param("string", "Disk size (informational).", optional=True, pattern=SIZE_PATTERN),
        "format": Param("string", "Image format.", optional=True, enum=("raw", "qcow2", "vmdk")),
        "media": Param("string", "Drive media type.", optional=True, enum=("disk", "cdrom")),
        "cache": Param(
            "string",
            "Cache mode (default: the hypervisor's).",
            optional=True,
            enum=("none", "writethrough", "writeback", "unsafe", "directsync"),
        ),
        "discard": Param("string", "Pass discard requests.", optional=True, enum=("ignore", "on")),
        "iothread": Param("boolean", "An IO thread for this drive (virtio).", optional=True),
        "aio": Param("string", "AIO type.", optional=True, enum=("native", "threads", "io_uring")),
        "ssd": Param("boolean", "Expose as a solid-state drive.", optional=True),
        "ro": Param("boolean", "Read-only drive.", optional=True),
        "serial": Param(
            "string", "The drive's serial number.", optional=True, pattern=r"[A-Za-z0-9_\-]{1,20}"
        ),
        "backup": _BOOL,
        "replicate": _BOOL,
        "snapshot": _BOOL,
        "shared": _BOOL,
        "mbps": Param("number", "Rate limit in MB/s.", optional=True, minimum=1),
        "mbps_rd": Param("number", "Read rate limit in MB/s.", optional=True, minimum=1),
        "mbps_wr": Param("number", "Write rate limit in MB/s.", optional=True, minimum=1),
        "iops": Param("integer", "Rate limit in operations/s.", optional=True, minimum=10),
        "iops_rd": Param("integer", "Read limit in operations/s.", optional=True, minimum=10),
        "iops_wr": Param("integer", "Write limit in operations/s.", optional=True, minimum=10),
    },
    default_key="file",
)

EFIDISK = PropertyFormat(
    {
        "file": Param(
            "string",
            "Volume ID or STORAGE:SIZE_IN_GiB (any size: allocated as needed).",
            format="corral-qm-disk-file",
        ),
        "size": Param("string", "Disk size (informational).", optional=True, pattern=SIZE_PATTERN),
        "format": Param("string", "Image format.", optional=True, enum=("raw",)),
        "efitype": Param(
            "string", "Size and type of the OVMF EFI vars.", optional=True, enum=("2m", "4m")
        ),
        "pre-enrolled-keys": Param(
            "boolean", "Secure boot with Microsoft's keys enrolled (q35 only).", optional=True
        ),
    },
    default_key="file",
)

NET = PropertyFormat(
    {
        "model": Param("string", "Network card model.", enum=tuple(sorted(NIC_MODELS))),
        "macaddr": Param(
            "string", "MAC address (generated if unset).", optional=True, format="mac-addr"
        ),
        "bridge": Param(
            "string",
            "Bridge to attach to (none: user networking).",
            optional=True,
            pattern=r"[A-Za-z0-9][-_.A-Za-z0-9]{0,14}",
        ),
        "tag": NIC_TAG,
        "rate": NIC_RATE,
        "mtu": Param("integer", "MTU (1: the bridge's).", optional=True, minimum=1, maximum=65520),
        "link_down": Param("boolean", "Whether the link is disconnected.", optional=True),
        "firewall": Param("boolean", "Proxmox firewall (not on corral nodes).", optional=True),
        "queues": Param("integer", "Packet queues (virtio).", optional=True, minimum=0, maximum=64),
    },
    keyed_enum=("model", "macaddr", NIC_MODELS),
)

CPU = PropertyFormat(
    {
        "cputype": Param("string", "Emulated CPU type (default kvm64).", pattern=CPU_MODEL),
        "flags": Param(
            "string", "+FLAG/-FLAG list separated by ';'.", optional=True, pattern=CPU_FLAGS
        ),
        "hidden": Param("boolean", "Hide the KVM signature from the guest.", optional=True),
    },
    default_key="cputype",
)

BOOT = PropertyFormat(
    {
        "legacy": Param(
            "string",
            "Boot on floppy (a), disk (c), cdrom (d), network (n).",
            optional=True,
            pattern=r"[acdn]{1,4}",
        ),
        "order": Param(
            "string",
            "Devices to boot from, in order, separated by ';'.",
            optional=True,
            pattern=BOOT_DEVICE + r"(;" + BOOT_DEVICE + r")*",
        ),
    },
    default_key="legacy",
)

VGA = PropertyFormat(
    {
        "type": Param("string", "VGA type.", optional=True, enum=VGA_TYPES),
        "memory": Param("integer", "VGA memory in MiB.", optional=True, minimum=4, maximum=512),
        "clipboard": Param("string", "Clipboard.", optional=True, enum=("vnc",)),
    },
    default_key="type",
)

AGENT = PropertyFormat(
    {
        "enabled": Param("boolean", "QEMU guest agent channel."),
        "fstrim_cloned_disks": _BOOL,
        "freeze-fs-on-backup": _BOOL,
        "type": Param("string", "Agent transport.", optional=True, enum=("virtio", "isa")),
    },
    default_key="enabled",
)

MACHINE_FMT = PropertyFormat(
    {
        "type": Param("string", "QEMU machine type.", optional=True, pattern=MACHINE),
        "viommu": Param("string", "vIOMMU variant.", optional=True, enum=("intel", "virtio")),
    },
    default_key="type",
)

_SMBIOS_TEXT = r"[A-Za-z0-9 ._+\-]{1,64}"
SMBIOS = PropertyFormat(
    {
        "uuid": Param(
            "string", "System UUID (also the domain's).", optional=True, pattern=UUID_PATTERN
        ),
        **{
            field: Param("string", f"SMBIOS type 1 {field}.", optional=True, pattern=_SMBIOS_TEXT)
            for field in ("manufacturer", "product", "version", "serial", "sku", "family")
        },
    }
)

IPCONFIG = PropertyFormat(
    {
        "ip": Param(
            "string", "IPv4 address in CIDR or dhcp.", optional=True, format="pve-ipv4-config"
        ),
        "gw": Param("string", "Default IPv4 gateway.", optional=True, format="ipv4"),
        "ip6": Param(
            "string", "IPv6 address in CIDR, auto or dhcp.", optional=True, format="pve-ipv6-config"
        ),
        "gw6": Param("string", "Default IPv6 gateway.", optional=True, format="ipv6"),
    }
)


def _disk_param(bus: str) -> Param:
    return Param(
        "string",
        f"Use volume as {bus.upper()} hard disk or CD-ROM.",
        optional=True,
        format=DISK,
        hotplug=False,
    )


def _fixed(type: str, description: str, **kw: Any) -> Param:
    """A key that only takes effect at the next start."""
    return Param(type, description, optional=True, hotplug=False, **kw)


CONFIG: dict[str, Param] = {
    "name": Param("string", "Set a name for the VM.", optional=True, format="dns-name"),
    "memory": Param(
        "integer",
        "Memory in MiB (running VMs shrink or grow back within their boot size).",
        optional=True,
        minimum=16,
        default=512,
    ),
    "balloon": Param(
        "integer",
        "Balloon target in MiB (0 disables the balloon device).",
        optional=True,
        minimum=0,
    ),
    "cores": _fixed("integer", "Cores per socket.", minimum=1, maximum=1024, default=1),
    "sockets": _fixed("integer", "CPU sockets.", minimum=1, maximum=16, default=1),
    "vcpus": _fixed("integer", "Number of hotplugged vcpus (at most sockets*cores).", minimum=1),
    "cpu": _fixed("string", "Emulated CPU type.", format=CPU),
    "kvm": _fixed("boolean", "Enable/disable KVM hardware virtualization.", default=1),
    "numa": _fixed("boolean", "NUMA topology: one node per socket.", default=0),
    "smbios1": _fixed("string", "SMBIOS type 1 (system) fields.", format=SMBIOS),
    "vmgenid": _fixed(
        "string",
        "VM generation ID (1: generate one at creation, 0: none).",
        pattern=r"0|1|" + UUID_PATTERN,
    ),
    "machine": _fixed("string", "QEMU machine type.", format=MACHINE_FMT),
    "bios": _fixed("string", "BIOS implementation.", enum=("seabios", "ovmf"), default="seabios"),
    "boot": _fixed("string", "Boot order.", format=BOOT),
    "efidisk0": _fixed("string", "A disk for the EFI vars (bios: ovmf).", format=EFIDISK),
    **{key: _disk_param(re.sub(r"\d+$", "", key)) for key in DISK_KEYS},
    "scsihw": _fixed("string", "SCSI controller model.", enum=SCSIHW, default="lsi"),
    **indexed("net", MAX_NET, Param("string", "Network device.", optional=True, format=NET)),
    "vga": _fixed("string", "Display.", format=VGA),
    **indexed(
        "serial",
        MAX_SERIAL,
        _fixed("string", "Serial port: socket or a /dev path.", format="corral-qm-serial"),
    ),
    "tablet": _fixed("boolean", "USB tablet (absolute pointer for VNC).", default=1),
    "agent": _fixed("string", "QEMU guest agent.", format=AGENT),
    "onboot": Param("boolean", "Start at system boot.", optional=True, default=0),
    "startup": Param(
        "string", "Startup and shutdown behavior.", optional=True, format="pve-startup-order"
    ),
    "ostype": _fixed("string", "Guest operating system.", enum=OSTYPES, default="other"),
    "description": Param(
        "string",
        "Description, shown in the web interface.",
        optional=True,
        format="multiline",
        max_length=8192,
    ),
    "tags": Param("string", "Tags of the VM.", optional=True, format="pve-tag-list"),
    "protection": Param("boolean", "Prevent removal of the VM.", optional=True, default=0),
    "lock": Param("string", "Lock/unlock the VM.", optional=True, enum=LOCKS),
    # cloud-init: the NoCloud ISO is rebuilt at every start (corral.kvm.cloudinit).
    "citype": _fixed("string", "cloud-init configuration format.", enum=("nocloud",)),
    "ciuser": _fixed("string", "cloud-init: user name.", pattern=r"[a-z_][a-z0-9_\-]{0,31}"),
    "cipassword": _fixed(
        "string", "cloud-init: password for the user.", secret=True, max_length=256
    ),
    "sshkeys": _fixed(
        "string",
        "cloud-init: public SSH keys (URL-encoded, one per line).",
        format="corral-sshkeys",
        max_length=16384,
    ),
    **indexed(
        "ipconfig",
        MAX_NET,
        _fixed(
            "string", "cloud-init: IP addresses and gateways of the matching netN.", format=IPCONFIG
        ),
    ),
    "nameserver": _fixed("string", "cloud-init: DNS servers.", format="corral-ip-list"),
    "searchdomain": _fixed("string", "cloud-init: DNS search domains.", format="corral-dns-list"),
    **indexed(
        "unused",
        MAX_UNUSED,
        Param(
            "string",
            "A disk no longer attached (still owned).",
            optional=True,
            format="pve-volume-id",
        ),
    ),
    "kernel": _fixed(
        "string", EXTENSION + "Kernel to boot directly (volume ID).", format="pve-volume-id"
    ),
    "initrd": _fixed(
        "string", EXTENSION + "Initramfs for `kernel` (volume ID).", format="pve-volume-id"
    ),
    "cmdline": _fixed(
        "string",
        EXTENSION + "Kernel command line for `kernel`.",
        max_length=2048,
        pattern=r"[ -~]*",
    ),
}

_NO_DEVICE = "corral does not map this device into VMs"
_HOST = "corral leaves this to the host's defaults"
_MIGRATION = "corral migrates without these limits"

# Keys Proxmox defines that corral does not implement (corral.cluster.schema.ignored):
# accepted without effect (their harmless values), or refused with the reason.
PVE_ONLY: dict[str, Param] = {
    "acpi": ignored("boolean", "Enable/disable ACPI.", "corral VMs always have ACPI", noop=(1,)),
    "affinity": unsupported("string", "Host cores for the guest's processes.", _HOST),
    "allow-ksm": ignored("boolean", "Allow KSM page merging.", _HOST),
    "amd-sev": unsupported("string", "AMD SEV features.", _NO_DEVICE),
    "arch": ignored(
        "string",
        "Virtual processor architecture.",
        "corral runs x86_64 VMs only",
        enum=("x86_64", "aarch64"),
        noop=("x86_64",),
    ),
    "args": unsupported("string", "Arbitrary arguments passed to kvm.", "not allowed in corral"),
    "audio0": unsupported("string", "Audio device.", _NO_DEVICE),
    "autostart": ignored(
        "boolean", "Automatic restart after crash.", "Proxmox ignores it too", noop=(0,)
    ),
    "bootdisk": ignored(
        "string",
        "Boot disk (deprecated).",
        "use `boot: order=`",
        pattern=r"(ide|sata|scsi|virtio)\d+",
    ),
    "cdrom": unsupported("string", "Alias for ide2.", "use ide2=VOLUME,media=cdrom"),
    "cicustom": unsupported("string", "cloud-init: custom files.", "not implemented in corral"),
    "ciupgrade": ignored(
        "boolean", "cloud-init: upgrade packages after the first boot.", "corral's cloud-init "
        "data asks for no package upgrade"
    ),
    "cpulimit": ignored(
        "number", "Limit of CPU usage.", "corral sets no CPU quota on VMs", minimum=0,
        maximum=128, noop=(0,),
    ),
    "cpuunits": ignored("integer", "CPU weight.", _HOST, minimum=1, maximum=262144),
    "freeze": ignored("boolean", "Freeze CPU at startup.", "VMs start running", noop=(0,)),
    "hookscript": unsupported("string", "Hook script.", "corral runs no hook scripts"),
    **indexed("hostpci", 16, unsupported("string", "Host PCI device.", _NO_DEVICE)),
    "hotplug": ignored(
        "string", "Hotplug features.", "corral hotplugs disks, NICs and memory as it can"
    ),
    "hugepages": unsupported("string", "Hugepages memory.", _HOST),
    "intel-tdx": unsupported("string", "Intel TDX features.", _NO_DEVICE),
    "ivshmem": unsupported("string", "Inter-VM shared memory.", _NO_DEVICE),
    "keephugepages": ignored("boolean", "Keep hugepages.", "no hugepages", noop=(0,)),
    "keyboard": ignored("string", "VNC keyboard layout.", "Proxmox deprecates it too"),
    "localtime": ignored("boolean", "RTC in local time.", "the RTC runs in UTC", noop=(0,)),
    "migrate_downtime": ignored("number", "Migration downtime.", _MIGRATION, minimum=0),
    "migrate_speed": ignored("integer", "Migration speed (MB/s).", _MIGRATION, minimum=0),
    **indexed("numa", 8, unsupported("string", "NUMA topology.", "use numa: 1")),
    **indexed(
        "parallel",
        3,
        unsupported(
            "string", "Host parallel device.", _NO_DEVICE, pattern=r"/dev/parport\d+|/dev/usb/lp\d+"
        ),
    ),
    "reboot": ignored("boolean", "Allow reboot.", "VMs always reboot", noop=(1,)),
    "rng0": unsupported("string", "VirtIO RNG.", _NO_DEVICE),
    "shares": ignored("integer", "Auto-ballooning shares.", _HOST, minimum=0, maximum=50000),
    "smp": unsupported("integer", "Number of CPUs (deprecated).", "use sockets and cores"),
    "spice_enhancements": unsupported("string", "SPICE enhancements.", "corral has no SPICE"),
    "startdate": ignored(
        "string",
        "RTC start date.",
        "the RTC starts at the host's time",
        pattern=r"(now|\d{4}-\d{1,2}-\d{1,2}(T\d{1,2}:\d{1,2}:\d{1,2})?)",
        noop=("now",),
    ),
    "tdf": ignored("boolean", "Time drift fix.", "not needed by QEMU's RTC", noop=(0,)),
    "template": ignored("boolean", "Enable/disable Template.", "use POST .../template", noop=(0,)),
    "tpmstate0": unsupported("string", "TPM state disk.", _NO_DEVICE),
    **indexed("usb", 14, unsupported("string", "USB device.", _NO_DEVICE)),
    **indexed("virtiofs", 10, unsupported("string", "virtiofs share.", _NO_DEVICE)),
    "vmstatestorage": ignored(
        "string", "Storage for VM state.", "corral keeps no VM state volumes",
        format="pve-storage-id",
    ),
    "watchdog": unsupported("string", "Hardware watchdog.", _NO_DEVICE),
}  # fmt: skip
CONFIG.update({k: v for k, v in PVE_ONLY.items() if k not in CONFIG})

SCHEMA = Schema(CONFIG)

CLOUDINIT_KEYS = frozenset(
    {"citype", "ciuser", "cipassword", "sshkeys", "nameserver", "searchdomain"}
    | {f"ipconfig{i}" for i in range(MAX_NET)}
)
# Keys that only describe the VM to corral (nothing to change in the hypervisor).
META_KEYS = frozenset(
    {"name", "description", "tags", "onboot", "startup", "protection", "lock"}
    | {f"unused{i}" for i in range(MAX_UNUSED)}
)
# What a running VM may take (DriverInfo.live_config); apply_live decides per change.
LIVE_KEYS = META_KEYS | {"memory", "balloon"} | {f"net{i}" for i in range(MAX_NET)}


def value(config: dict[str, Any], key: str) -> Any:
    """A key's value or its declared default."""
    if key in config and config[key] is not None:
        return config[key]
    return CONFIG[key].default


def parse(key: str, fmt: PropertyFormat, text: str) -> dict[str, Any]:
    try:
        return fmt.parse(str(text))
    except ValueError as err:
        raise ParamError.one(key, str(err)) from None


def parse_opt(config: dict[str, Any], key: str, fmt: PropertyFormat) -> dict[str, Any]:
    text = config.get(key)
    return parse(key, fmt, text) if text not in (None, "") else {}


def _copy(parsed: dict[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {k: dict(v) for k, v in parsed.items()}  # callers may change what they get


def parse_disks(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"scsi0": parsed, ...} in Proxmox's bus order (ide, sata, scsi, virtio)."""
    if isinstance(config, VmConfig):
        return _copy(config.disks)
    return {k: parse(k, DISK, config[k]) for k in DISK_KEYS if config.get(k)}


def parse_nets(config: dict[str, Any]) -> dict[int, dict[str, Any]]:
    if isinstance(config, VmConfig):
        return _copy(config.nets)
    return {
        i: parse(f"net{i}", NET, config[f"net{i}"]) for i in range(MAX_NET) if config.get(f"net{i}")
    }


def parse_ipconfigs(config: dict[str, Any]) -> dict[int, dict[str, Any]]:
    if isinstance(config, VmConfig):
        return _copy(config.ipconfigs)
    return {
        i: parse(f"ipconfig{i}", IPCONFIG, config[f"ipconfig{i}"])
        for i in range(MAX_NET)
        if config.get(f"ipconfig{i}")
    }


class VmConfig(dict[str, Any]):
    """A VM's config parsed once, before rendering: still the mapping of Proxmox
    keys (so `value()` and the renderers read it as before), with its disks,
    NICs and cloud-init ipconfigs parsed up front. parse_disks/parse_nets/
    parse_ipconfigs answer from it instead of parsing again: a start used to
    parse every netN five times (MACs, bridges, NIC XML, cloud-init twice).
    Read-only: a change would leave the parsed parts stale."""

    disks: dict[str, dict[str, Any]]
    nets: dict[int, dict[str, Any]]
    ipconfigs: dict[int, dict[str, Any]]

    @classmethod
    def parse(cls, config: dict[str, Any]) -> VmConfig:
        """Parse `config` (ParamError naming the first bad key); a VmConfig is returned as is."""
        if isinstance(config, VmConfig):
            return config
        vm = cls(config)
        vm.disks = parse_disks(config)
        vm.nets = parse_nets(config)
        vm.ipconfigs = parse_ipconfigs(config)
        return vm

    def _read_only(self, *_: Any, **__: Any) -> None:
        raise TypeError("a parsed VM config is read-only; change the dict it came from")

    __setitem__ = __delitem__ = update = pop = setdefault = clear = _read_only  # type: ignore[assignment]


def bus_of(key: str) -> tuple[str, int]:
    match = re.fullmatch(r"([a-z]+)(\d+)", key)
    assert match, key
    return match.group(1), int(match.group(2))


def is_cdrom(disk: dict[str, Any]) -> bool:
    return disk.get("media") == "cdrom" or disk["file"] in ("none", "cdrom")


def is_cloudinit(disk: dict[str, Any]) -> bool:
    return str(disk["file"]).endswith(":cloudinit")


def volume_of(disk: dict[str, Any]) -> str | None:
    """The volume ID a parsed disk refers to (None: empty cdrom, cloud-init, to allocate)."""
    file = str(disk["file"])
    if file in ("none", "cdrom") or is_cloudinit(disk) or new_volume_size(file) is not None:
        return None
    return file


def has_cloudinit(config: dict[str, Any]) -> bool:
    if any(config.get(k) not in (None, "") for k in CLOUDINIT_KEYS):
        return True
    return any(is_cloudinit(d) for d in parse_disks(config).values())


def owned(volid: str, vmid: int) -> bool:
    """A volume named for this VM (`local:100/vm-100-disk-0.raw`, `ceph:vm-100-disk-1`)."""
    last = volid.partition(":")[2].rsplit("/", 1)[-1]
    return last.startswith(f"vm-{vmid}-")


def print_disk(values: dict[str, Any]) -> str:
    return DISK.print(values)
