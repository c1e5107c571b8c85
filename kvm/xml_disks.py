"""Disks, CD-ROMs and their controllers (ide, sata, scsi, virtio), file or rbd.

Target names are derived from the config key so they never collide between
buses (sata after the 31 scsi names); every disk carries an explicit
address, so moving a disk between keys is the only way its place changes.
q35 has no IDE: as on Proxmox, ideN becomes a port of the AHCI controller.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from corral.cluster.errors import ParamError
from corral.kvm import config as cfg
from corral.kvm.xml_base import Disks, Facts, alias, boot_order, el, letters
from corral.kvm.xml_firmware import is_q35

SCSI_MODELS = {
    "lsi": "lsilogic",
    "virtio-scsi-pci": "virtio-scsi",
    "virtio-scsi-single": "virtio-scsi",
    "megasas": "lsisas1078",
    "pvscsi": "vmpvscsi",
}
LSI_UNITS = 7  # targets per LSI controller
MIB = 1024 * 1024


def target_dev(key: str, config: dict[str, Any]) -> str:
    bus, n = cfg.bus_of(key)
    if bus == "virtio":
        return "vd" + letters(n)
    if bus == "scsi":
        return "sd" + letters(n)
    if bus == "sata":
        return "sd" + letters(cfg.BUSES["scsi"] + n)
    if is_q35(config):
        return "sd" + letters(cfg.BUSES["scsi"] + cfg.BUSES["sata"] + n)
    return "hd" + letters(n)


def _disks(config: dict[str, Any], facts: Facts) -> dict[str, dict[str, Any]]:
    parsed = cfg.parse_disks(config)
    if facts.cloudinit and facts.cloudinit not in parsed:
        parsed[facts.cloudinit] = {"file": "cloudinit", "media": "cdrom"}
    return parsed


def iothread_ids(config: dict[str, Any]) -> dict[str, int]:
    """{disk key: iothread id}: virtio disks, or virtio-scsi-single controllers, asking for one."""
    single = cfg.value(config, "scsihw") == "virtio-scsi-single"
    out: dict[str, int] = {}
    for key, disk in cfg.parse_disks(config).items():
        bus, _ = cfg.bus_of(key)
        if disk.get("iothread") and (bus == "virtio" or (bus == "scsi" and single)):
            out[key] = len(out) + 1
    return out


def iothreads(config: dict[str, Any], facts: Facts) -> list[ET.Element]:
    count = len(iothread_ids(config))
    return [el(None, "iothreads", str(count))] if count else []


def disk_devices(config: dict[str, Any], disks: Disks, facts: Facts) -> list[ET.Element]:
    order = boot_order(config)
    threads = iothread_ids(config)
    out = []
    controllers: dict[tuple[str, int], ET.Element] = {}
    for key, disk in _disks(config, facts).items():
        out.append(_disk(key, disk, config, disks.get(key), facts, order, threads))
        for ctl in _controllers(key, config, threads):
            controllers.setdefault((ctl.get("type", ""), int(ctl.get("index", 0))), ctl)
    return out + [controllers[k] for k in sorted(controllers)]


def _disk(
    key: str,
    disk: dict[str, Any],
    config: dict[str, Any],
    src: Any,
    facts: Facts,
    order: dict[str, int],
    threads: dict[str, int],
) -> ET.Element:
    bus, n = cfg.bus_of(key)
    cdrom = cfg.is_cdrom(disk) or key == facts.cloudinit
    if bus == "virtio" and cdrom:
        raise ParamError.one(key, "a virtio drive cannot be a CD-ROM (use ide or sata)")
    if src is None and not (cdrom and disk["file"] in ("none", "cdrom")):
        raise ParamError.one(key, f"volume '{disk['file']}' is not available on this node")
    rbd = bool(src) and src.get("kind") == "rbd"
    node = el(None, "disk", type="network" if rbd else "file", device="cdrom" if cdrom else "disk")
    if src is not None:
        fmt = str(src.get("format") or disk.get("format") or "raw")
        el(
            node,
            "driver",
            name="qemu",
            type=fmt,
            cache=disk.get("cache"),
            io=disk.get("aio"),
            discard={"on": "unmap", "ignore": "ignore"}.get(disk.get("discard") or ""),
            iothread=threads.get(key) if bus == "virtio" else None,
        )
        if rbd:
            _rbd_source(node, key, src)
        else:
            el(node, "source", file=str(src["path"]))
    target_bus = "sata" if bus == "ide" and is_q35(config) else bus
    el(
        node,
        "target",
        dev=target_dev(key, config),
        bus=target_bus,
        rotation_rate="1" if disk.get("ssd") and bus != "virtio" else None,
    )
    if cdrom or disk.get("ro"):
        el(node, "readonly")
    if disk.get("serial"):
        el(node, "serial", str(disk["serial"]))
    _iotune(node, key, disk)
    if key in order:
        el(node, "boot", order=order[key])
    el(node, "alias", name=alias(key))
    if bus != "virtio":
        ctl, unit = _drive_slot(key, config)
        if bus == "ide" and not is_q35(config):
            el(node, "address", type="drive", controller=0, bus=n // 2, target=0, unit=n % 2)
        else:
            el(node, "address", type="drive", controller=ctl, bus=0, target=0, unit=unit)
    return node


def _drive_slot(key: str, config: dict[str, Any]) -> tuple[int, int]:
    """(controller index, unit) on the disk's controller."""
    bus, n = cfg.bus_of(key)
    if bus == "scsi":
        hw = cfg.value(config, "scsihw")
        if hw == "lsi":
            return n // LSI_UNITS, n % LSI_UNITS
        if hw == "virtio-scsi-single":
            return n, 0
        return 0, n
    if bus == "ide":  # q35: the ICH9 AHCI controller's ports
        return 0, n
    return (1 if is_q35(config) else 0), n  # sata: a second AHCI on q35


def _controllers(key: str, config: dict[str, Any], threads: dict[str, int]) -> list[ET.Element]:
    bus, _ = cfg.bus_of(key)
    ctl, _ = _drive_slot(key, config)
    if bus == "scsi":
        hw = str(cfg.value(config, "scsihw"))
        node = el(None, "controller", type="scsi", index=ctl, model=SCSI_MODELS[hw])
        if key in threads:
            el(node, "driver", iothread=threads[key])
        return [node]
    if bus == "sata" or (bus == "ide" and is_q35(config)):
        return [el(None, "controller", type="sata", index=ctl)]
    return []


def _rbd_source(node: ET.Element, key: str, src: Any) -> None:
    user = src.get("user")
    # Without <auth>, QEMU's librbd reads the key from the conf's keyring
    # ([client] section) as client.admin; another user needs a libvirt secret.
    if src.get("secret_uuid"):
        auth = el(node, "auth", username=user or "admin")
        el(auth, "secret", type="ceph", uuid=str(src["secret_uuid"]))
    elif user not in (None, "", "admin"):
        raise ParamError.one(
            key,
            f"rbd user '{user}' needs a libvirt secret (only admin's "
            "keyring is read from the conf)",
        )
    name = f"{src['pool']}/{src['image']}"
    if src.get("namespace"):
        name = f"{src['pool']}/{src['namespace']}/{src['image']}"
    source = el(node, "source", protocol="rbd", name=name)
    for host in src.get("hosts") or []:
        # The rbd plugin gives {"host", "port"} (its monhost parsed); strings also do.
        if isinstance(host, dict):
            hostname, port = str(host["host"]), (str(host["port"]) if host.get("port") else None)
        else:
            hostname, port = _split_host(str(host))
        el(source, "host", name=hostname, port=port)
    if src.get("conf"):
        el(source, "config", file=str(src["conf"]))


def _split_host(text: str) -> tuple[str, str | None]:
    """'10.0.0.1:6789' / '[::1]:6789' / 'mon1' -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, rest.lstrip(":") or None
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, port
    return text, None


def _iotune(node: ET.Element, key: str, disk: dict[str, Any]) -> None:
    limits = {
        "total_bytes_sec": disk.get("mbps"),
        "read_bytes_sec": disk.get("mbps_rd"),
        "write_bytes_sec": disk.get("mbps_wr"),
    }
    iops = {
        "total_iops_sec": disk.get("iops"),
        "read_iops_sec": disk.get("iops_rd"),
        "write_iops_sec": disk.get("iops_wr"),
    }
    for group, total, name in (
        (limits, "total_bytes_sec", "mbps"),
        (iops, "total_iops_sec", "iops"),
    ):
        if group[total] is not None and any(v is not None for k, v in group.items() if k != total):
            raise ParamError.one(key, f"{name} cannot be combined with {name}_rd/{name}_wr")
    values = {k: int(v * MIB) for k, v in limits.items() if v is not None}
    values.update({k: int(v) for k, v in iops.items() if v is not None})
    if values:
        tune = el(node, "iotune")
        for name, amount in values.items():
            el(tune, name, str(amount))
