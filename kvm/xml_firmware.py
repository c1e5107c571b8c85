"""Machine type, firmware (SeaBIOS or OVMF with its EFI vars), direct kernel boot."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg
from corral.kvm.xml_base import Disks, Facts, el, legacy_boot

_LEGACY_DEV = {"a": "fd", "c": "hd", "d": "cdrom", "n": "network"}
# Bytes of an EFI vars store, by efitype (the size of OVMF's template).
EFI_VARS_SIZE = {"2m": 128 * 1024, "4m": 540672}


def machine(config: dict[str, Any]) -> str:
    text = cfg.parse_opt(config, "machine", cfg.MACHINE_FMT).get("type") or "pc"
    return re.sub(r"\+pve\d+$", "", str(text))  # Proxmox's own machine revisions


def is_q35(config: dict[str, Any]) -> bool:
    return "q35" in machine(config)


def efi_type(config: dict[str, Any]) -> str:
    return str(cfg.parse_opt(config, "efidisk0", cfg.EFIDISK).get("efitype") or "2m")


def vars_template(config: dict[str, Any], facts: Facts) -> str:
    efi = cfg.parse_opt(config, "efidisk0", cfg.EFIDISK)
    if efi.get("pre-enrolled-keys"):
        return facts.firmware["vars_ms"]
    return facts.firmware[f"vars_{efi_type(config)}"]


def os_section(config: dict[str, Any], disks: Disks, facts: Facts) -> list[ET.Element]:
    node = el(None, "os")
    el(node, "type", "hvm", arch="x86_64", machine=machine(config))
    if cfg.value(config, "bios") == "ovmf":
        _ovmf(node, config, disks, facts)
    elif config.get("efidisk0"):
        raise ParamError.one("efidisk0", "an EFI disk needs bios: ovmf")
    kernel = config.get("kernel")
    for key in ("initrd", "cmdline"):
        if config.get(key) and not kernel:
            raise ParamError.one(key, "only used together with 'kernel'")
    if kernel:
        el(node, "kernel", facts.files["kernel"])
        if config.get("initrd"):
            el(node, "initrd", facts.files["initrd"])
        if config.get("cmdline"):
            el(node, "cmdline", str(config["cmdline"]))
    letters = legacy_boot(config)
    for letter in letters or "":
        el(node, "boot", dev=_LEGACY_DEV[letter])
    if config.get("smbios1"):
        el(node, "smbios", mode="sysinfo")
    return [node]


def domain_uuid(config: dict[str, Any], facts: Facts) -> str:
    """`smbios1: uuid=...` is the VM's identity when set (libvirt wants both equal)."""
    smbios = cfg.parse_opt(config, "smbios1", cfg.SMBIOS)
    return str(smbios.get("uuid") or facts.uuid).lower()


def sysinfo(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    smbios = cfg.parse_opt(config, "smbios1", cfg.SMBIOS)
    if not smbios:
        return []
    node = el(None, "sysinfo", type="smbios")
    system = el(node, "system")
    for name in ("manufacturer", "product", "version", "serial", "sku", "family"):
        if smbios.get(name):
            el(system, "entry", str(smbios[name]), name=name)
    el(system, "entry", domain_uuid(config, facts), name="uuid")
    return [node]


def genid(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    """`vmgenid`: a UUID, or `1` for one libvirt picks (create() writes one back)."""
    value = str(config.get("vmgenid") or "0")
    if value == "0":
        return []
    return [el(None, "genid", None if value == "1" else value.lower())]


def _ovmf(node: ET.Element, config: dict[str, Any], disks: Disks, facts: Facts) -> None:
    efi = cfg.parse_opt(config, "efidisk0", cfg.EFIDISK)
    secure = bool(efi.get("pre-enrolled-keys"))
    if secure and not is_q35(config):
        raise ParamError.one("efidisk0", "secure boot (pre-enrolled-keys) needs machine: q35")
    code = facts.firmware["code_secboot"] if secure else facts.firmware[f"code_{efi_type(config)}"]
    el(node, "loader", code, readonly="yes", type="pflash", secure="yes" if secure else None)
    if not config.get("efidisk0"):
        # No efidisk: libvirt keeps a per-domain copy of the template (not migrated).
        el(node, "nvram", template=vars_template(config, facts))
        return
    disk = disks.get("efidisk0")
    if disk is None or disk.get("kind") != "file":
        raise ParamError.one("efidisk0", "EFI vars are only supported on file-based storage")
    el(node, "nvram", str(disk["path"]))
