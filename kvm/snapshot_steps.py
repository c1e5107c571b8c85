"""The VM's steps of the shared snapshot flow (corral.cluster.snapshots).

- Filesystems are frozen through the QEMU guest agent where the config
  enables one (`agent: 1`); a guest without a responding agent is snapshotted
  crash-consistent, as Proxmox does, with a line in the task log.
- A running QEMU holds its qcow2 files open and caches their metadata, so an
  internal snapshot of such a file is taken (and deleted) by QEMU itself
  (QMP `blockdev-snapshot-internal-sync`), never by qemu-img beside it. Other
  storages (btrfs, rbd, zfs) snapshot live volumes themselves.
- RAM state (`vmstate=1`): libvirt saves the domain to a file, which stops
  it; the disks are then snapshotted at rest and the domain is restored from
  the file, so memory and disks are one instant. A rollback restores the
  disks and then the domain from the same file.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import libvirt

from corral.cluster.errors import CommandFailed, Conflict, CorralError
from corral.cluster.guest_driver import LogFn, VolumeAccess

if TYPE_CHECKING:
    from corral.kvm.driver import QemuDriver

AGENT_TIMEOUT = 30.0
SAVE_TIMEOUT = 600.0


def _qmp(drv: QemuDriver, dom: libvirt.virDomain, cmd: dict[str, Any], what: str) -> Any:
    import libvirt_qemu  # Debian's python3-libvirt ships it beside libvirt

    def call() -> Any:
        return libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0)

    out = json.loads(drv.lv.run(what, call, timeout=SAVE_TIMEOUT))
    if "error" in out:
        raise CommandFailed(cmd=cmd["execute"], stderr=out["error"].get("desc", str(out)))
    return out.get("return")


def _node_name(dom: libvirt.virDomain, path: str) -> str:
    """QEMU's block node of the disk whose file is `path` (libvirt names it by index)."""
    root = ET.fromstring(dom.XMLDesc(0))
    for disk in root.findall("./devices/disk"):
        src = disk.find("source")
        if src is not None and src.get("file") == path and src.get("index"):
            return f"libvirt-{src.get('index')}-format"
    raise Conflict(f"the running VM does not use '{path}'")


def freeze(drv: QemuDriver, vmid: int, config: dict[str, Any], *, log: LogFn) -> bool:
    from corral.kvm import config as cfg

    if not cfg.parse_opt(config, "agent", cfg.AGENT).get("enabled"):
        return False
    dom = drv._domain(vmid)
    if not drv._active(dom):
        return False
    assert dom is not None
    try:
        count = drv.lv.run(f"freeze VM {vmid}", dom.fsFreeze, None, 0, timeout=AGENT_TIMEOUT)
    except CorralError as err:
        log(f"guest agent did not freeze the filesystems ({err}); snapshot is crash-consistent")
        return False
    log(f"guest agent froze {count} filesystem(s)")
    return True


def thaw(drv: QemuDriver, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
    dom = drv._domain(vmid)
    if not drv._active(dom):
        return
    assert dom is not None
    try:
        drv.lv.run(f"thaw VM {vmid}", dom.fsThaw, None, 0, timeout=AGENT_TIMEOUT)
        log("guest agent thawed the filesystems")
    except CorralError as err:
        log(f"WARNING: guest agent thaw failed: {err}")


def snapshot_volume(
    drv: QemuDriver,
    vmid: int,
    volid: str,
    snap: str,
    *,
    op: str,
    running: bool,
    volumes: VolumeAccess,
    log: LogFn,
) -> bool:
    """Done through QEMU (True) when the running VM holds a qcow2 file; else False."""
    if not running:
        return False
    disk = volumes.qemu_disk(volid)
    if disk.get("kind") != "file" or disk.get("format") != "qcow2":
        return False
    dom = drv._domain(vmid)
    if not drv._active(dom):
        return False
    assert dom is not None
    node = drv.lv.run("disk nodes", _node_name, dom, disk["path"])
    execute = {
        "create": "blockdev-snapshot-internal-sync",
        "delete": "blockdev-snapshot-delete-internal-sync",
    }[op]
    _qmp(drv, dom, {"execute": execute, "arguments": {"device": node, "name": snap}}, execute)
    log(f"{volid}: snapshot '{snap}' {op}d by QEMU ({node})")
    return True


def save_vmstate(drv: QemuDriver, vmid: int, path: str, *, log: LogFn) -> None:
    dom = drv._domain(vmid)
    if not drv._active(dom):
        raise Conflict(f"VM {vmid} not running")
    assert dom is not None
    with drv._lock(vmid):
        drv.lv.run(f"save VM {vmid}", dom.saveFlags, path, None, 0, timeout=SAVE_TIMEOUT)
    log(f"RAM state of VM {vmid} saved")


def restore_vmstate(drv: QemuDriver, vmid: int, path: str, *, log: LogFn) -> None:
    with drv._lock(vmid):
        conn = drv.lv.open()
        drv.lv.run(f"restore VM {vmid}", conn.restoreFlags, path, None, 0, timeout=SAVE_TIMEOUT)
    log(f"VM {vmid} resumed from its saved RAM state")
