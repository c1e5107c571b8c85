"""Volume identity as Proxmox writes it: `STORAGE:VOLNAME`.

File-based storages (dir, btrfs) lay volumes out in folders, so the name
says where the file lives and what it holds:

    local:100/vm-100-disk-0.qcow2      images, owned by VM 100
    local:101/subvol-101-disk-0.subvol rootdir (a directory), owned by CT 101
    local:iso/debian.iso               iso
    local:vztmpl/busybox.tar.gz        vztmpl
    local:backup/vzdump-qemu-100-2024_01_01-00_00_00.vma.zst
    local:snippets/hook.sh

Block storages (lvm, lvmthin, zfspool, rbd) use bare names:

    tank:subvol-101-disk-0     ceph:vm-100-disk-1     ceph:base-100-disk-0/vm-101-disk-0

The owner VMID is always derivable from the name. Every name is checked
here, before any plugin turns it into a path or an argument: one component
at a time, from a small alphabet, never starting with `-` (option
injection) or `.` (traversal, hidden files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.cluster.errors import ParamError
from corral.cluster.schema import FORMATS

CONTENT_TYPES = ("images", "rootdir", "vztmpl", "iso", "backup", "snippets")

# One path component: no leading '-' or '.', nothing a shell or a path could misread.
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,199}")
_DISK = re.compile(r"(vm|base|subvol|basevol)-([1-9]\d{2,8})-([A-Za-z0-9_][A-Za-z0-9_+\-]*)")
_FILE_DISK = re.compile(_DISK.pattern + r"(?:\.(raw|qcow2|vmdk|subvol))?")
_VMID = re.compile(r"[1-9]\d{2,8}")
_BACKUP_VMID = re.compile(r"vzdump-(?:lxc|qemu|openvz)-([1-9]\d{2,8})-")
_EXT = {
    "iso": (".iso", ".img"),
    "vztmpl": (".tar.gz", ".tar.xz", ".tar.zst", ".tgz"),
    "backup": (".tar", ".tar.gz", ".tar.zst", ".tar.lzo", ".vma", ".vma.zst", ".vma.gz"),
}
# Folders of a file-based storage, by content type (Proxmox's layout).
CONTENT_DIRS = {
    "images": "images",
    "rootdir": "images",
    "iso": "template/iso",
    "vztmpl": "template/cache",
    "backup": "dump",
    "snippets": "snippets",
}
_VOLNAME_PREFIX = {"iso": "iso", "vztmpl": "vztmpl", "backup": "backup", "snippets": "snippets"}


@dataclass(frozen=True)
class VolName:
    """A parsed volume name. `name` is the last component (file or image name)."""

    vtype: str  # one of CONTENT_TYPES
    name: str
    vmid: int | None = None
    fmt: str | None = None  # raw | qcow2 | vmdk | subvol, None for non-disk content
    base: str | None = None  # linked clones: the base volume's name
    isbase: bool = False


def _bad(param: str, reason: str) -> ParamError:
    return ParamError.one(param, reason)


def check_storage_id(storage: str, *, param: str = "storage") -> str:
    try:
        FORMATS["pve-storage-id"](storage)
    except ValueError as exc:
        raise _bad(param, str(exc)) from None
    return storage


def check_component(text: str, *, param: str = "volume") -> str:
    """One safe path/argument component, or ParamError naming `param`."""
    if not _COMPONENT.fullmatch(text) or ".." in text:
        raise _bad(param, f"invalid name '{_printable(text)}'")
    return text


def _printable(text: str) -> str:
    return text.encode("unicode_escape").decode()[:80]


def split_volid(volid: str, *, param: str = "volume") -> tuple[str, str]:
    """'local:iso/x.iso' -> ('local', 'iso/x.iso'); ParamError when malformed."""
    if not isinstance(volid, str) or len(volid) > 512:
        raise _bad(param, "unable to parse volume ID")
    storage, sep, volname = volid.partition(":")
    if not sep or not volname:
        raise _bad(param, f"unable to parse volume ID '{_printable(volid)}'")
    check_storage_id(storage, param=param)
    return storage, volname


def _disk_vmid(match: re.Match[str]) -> tuple[int, bool, str]:
    kind = match.group(1)
    return int(match.group(2)), kind in ("base", "basevol"), kind


def parse_path_volname(volname: str, *, param: str = "volume") -> VolName:
    """Names of file-based storages (dir, btrfs)."""
    parts = volname.split("/")
    for part in parts:
        check_component(part, param=param)
    head = parts[0]
    if head in _VOLNAME_PREFIX:
        if len(parts) != 2:
            raise _bad(param, f"invalid {head} volume name '{_printable(volname)}'")
        vtype, name = _VOLNAME_PREFIX[head], parts[1]
        exts = _EXT.get(vtype)
        if exts and not name.lower().endswith(exts):
            raise _bad(param, f"{vtype} name '{name}' must end with one of {', '.join(exts)}")
        vmid = None
        if vtype == "backup" and (m := _BACKUP_VMID.match(name)):
            vmid = int(m.group(1))
        return VolName(vtype, name, vmid=vmid)
    if not _VMID.fullmatch(head) or len(parts) not in (2, 4):
        raise _bad(param, f"unable to parse volume name '{_printable(volname)}'")
    base = None
    if len(parts) == 4:  # BASEVMID/BASENAME/VMID/NAME: a linked clone of a base image
        bm = _FILE_DISK.fullmatch(parts[1])
        if not bm or int(bm.group(2)) != int(head) or bm.group(1) not in ("base", "basevol"):
            raise _bad(param, f"invalid base volume in '{_printable(volname)}'")
        base = f"{parts[0]}/{parts[1]}"
        parts = parts[2:]
        if not _VMID.fullmatch(parts[0]):
            raise _bad(param, f"unable to parse volume name '{_printable(volname)}'")
    m = _FILE_DISK.fullmatch(parts[1])
    if not m:
        raise _bad(param, f"invalid disk name '{parts[1]}'")
    vmid, isbase, kind = _disk_vmid(m)
    if vmid != int(parts[0]):
        raise _bad(param, f"disk '{parts[1]}' does not belong to VM {parts[0]}")
    fmt = m.group(4) or ("subvol" if kind in ("subvol", "basevol") else None)
    if fmt is None:
        raise _bad(param, f"disk name '{parts[1]}' lacks a format extension")
    if (fmt == "subvol") != (kind in ("subvol", "basevol")):
        raise _bad(param, f"disk name '{parts[1]}' does not match its format")
    vtype = "rootdir" if fmt == "subvol" else "images"
    return VolName(vtype, parts[1], vmid=vmid, fmt=fmt, base=base, isbase=isbase)


def parse_block_volname(volname: str, *, param: str = "volume") -> VolName:
    """Names of block storages (lvm, lvmthin, zfspool, rbd): `[BASE/]NAME`."""
    parts = volname.split("/")
    if len(parts) > 2:
        raise _bad(param, f"unable to parse volume name '{_printable(volname)}'")
    for part in parts:
        check_component(part, param=param)
    base = None
    if len(parts) == 2:
        bm = _DISK.fullmatch(parts[0])
        if not bm or bm.group(1) not in ("base", "basevol"):
            raise _bad(param, f"invalid base volume in '{_printable(volname)}'")
        base = parts[0]
    m = _DISK.fullmatch(parts[-1])
    if not m:
        raise _bad(param, f"invalid disk name '{_printable(parts[-1])}'")
    vmid, isbase, kind = _disk_vmid(m)
    subvol = kind in ("subvol", "basevol")
    return VolName(
        "rootdir" if subvol else "images",
        parts[-1],
        vmid=vmid,
        fmt="subvol" if subvol else "raw",
        base=base,
        isbase=isbase,
    )


def disk_name(vmid: int, index: int, *, subvol: bool = False, fmt: str | None = None) -> str:
    """`vm-100-disk-0[.qcow2]` / `subvol-101-disk-0[.subvol]`."""
    name = f"{'subvol' if subvol else 'vm'}-{vmid}-disk-{index}"
    return f"{name}.{fmt}" if fmt else name


def check_disk_name(name: str, *, vmid: int, param: str = "name") -> re.Match[str]:
    """A user-chosen disk name must be a disk name of `vmid` (Proxmox: 'illegal name')."""
    check_component(name, param=param)
    m = _FILE_DISK.fullmatch(name)
    if not m:
        raise _bad(param, f"illegal name '{name}' - should be 'vm-{vmid}-*'")
    if int(m.group(2)) != vmid:
        raise _bad(param, f"illegal name '{name}' - wrong vmid (should be {vmid})")
    return m


def check_content(
    content: str, allowed: frozenset[str] | set[str], *, param: str = "content"
) -> str:
    if content not in CONTENT_TYPES:
        raise _bad(param, f"unknown content type '{_printable(content)}'")
    if content not in allowed:
        raise _bad(param, f"storage does not support content type '{content}'")
    return content
