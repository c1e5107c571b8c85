"""What every domain XML renderer shares: node facts, element helpers, boot order.

The renderers (xml_cpu, xml_firmware, xml_disks, xml_nics, xml_chars,
xml_graphics, assembled by xml_domain) are pure functions of (config,
resolved disks, Facts): the driver gathers everything that needs the system
(volume paths from `volumes.qemu_disk()`, generated MACs, passwords, the
cloud-init ISO) before rendering, so golden files pin the output exactly.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg

Disks = Mapping[str, Mapping[str, Any]]  # config key -> volumes.qemu_disk() result

OVMF = {
    "code_4m": "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "vars_4m": "/usr/share/OVMF/OVMF_VARS_4M.fd",
    "code_2m": "/usr/share/OVMF/OVMF_CODE.fd",
    "vars_2m": "/usr/share/OVMF/OVMF_VARS.fd",
    "code_secboot": "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
    "vars_ms": "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
}


@dataclass(frozen=True)
class Facts:
    """What the node knows that the config does not say."""

    vmid: int
    name: str  # the libvirt domain name
    uuid: str
    node: str = ""
    run_dir: str = "/run/corral/qemu"  # serial sockets and their logs
    emulator: str = "/usr/bin/qemu-system-x86_64"
    macs: Mapping[int, str] = field(default_factory=dict)  # net index -> MAC if unset
    vnc_listen: str = "127.0.0.1"
    vnc_password: str = ""
    files: Mapping[str, str] = field(default_factory=dict)  # "kernel"/"initrd" -> host path
    cloudinit: str | None = None  # the disk key that carries the cidata ISO
    firmware: Mapping[str, str] = field(default_factory=lambda: dict(OVMF))


def el(parent: ET.Element | None, tag: str, text: str | None = None, **attrs: Any) -> ET.Element:
    """A child element; attributes with value None are left out."""
    clean = {k.rstrip("_").replace("__", "-"): str(v) for k, v in attrs.items() if v is not None}
    node = ET.Element(tag, clean) if parent is None else ET.SubElement(parent, tag, clean)
    if text is not None:
        node.text = text
    return node


def letters(index: int) -> str:
    """0 -> a, 25 -> z, 26 -> aa (disk target names)."""
    out = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        out = chr(ord("a") + rem) + out
    return out


def alias(key: str) -> str:
    """User aliases (`ua-` prefix) let the driver find a device by its config key."""
    return f"ua-{key}"


def boot_order(config: dict[str, Any]) -> dict[str, int]:
    """{device key: boot index} for `boot: order=...`; empty for legacy letters."""
    boot = cfg.parse_opt(config, "boot", cfg.BOOT)
    order = [d for d in str(boot.get("order") or "").split(";") if d]
    for dev in order:
        if not config.get(dev):
            raise ParamError.one("boot", f"boot device '{dev}' does not exist")
    if len(set(order)) != len(order):
        raise ParamError.one("boot", "a device is listed twice in the boot order")
    return {dev: n + 1 for n, dev in enumerate(order)}


def legacy_boot(config: dict[str, Any]) -> str | None:
    """The legacy `boot: cdn` letters (Proxmox's default when no order is given)."""
    boot = cfg.parse_opt(config, "boot", cfg.BOOT)
    if boot.get("order"):
        return None
    return str(boot.get("legacy") or "cdn")
