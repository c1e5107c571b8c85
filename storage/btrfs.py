"""`btrfs`: a dir storage on btrfs whose volumes are subvolumes (Proxmox's btrfs plugin).

Same folders and volume names as `dir`; what differs is what lies behind a name:

    PATH/images/VMID/vm-VMID-disk-N/disk.raw      volume VMID/vm-VMID-disk-N.raw:
                                                  a subvolume holding one raw file
    PATH/images/VMID/subvol-VMID-disk-N.subvol/   volume VMID/subvol-VMID-disk-N.subvol:
                                                  a subvolume that is the container root
    PATH/images/VMID/<subvolume>@SNAP             read-only snapshot SNAP of that subvolume

A subvolume per raw disk is what makes raw disks snapshottable: a snapshot is
a read-only `btrfs subvolume snapshot -r` beside it, rollback swaps the live
subvolume for a writable snapshot of the snapshot, and a linked clone is a
writable snapshot (it shares extents and depends on nothing afterwards, so
clones are plain volumes of their new owner). Names with `@` are never valid
volume names, so snapshots and temporaries never show up as volumes.

Quotas: with `quotas: 1` (qgroups enabled on the file system by the admin) a
container root's size becomes a qgroup limit; otherwise it is advisory.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tarfile
import uuid
from typing import IO, Any, ClassVar

from corral.cluster.errors import CommandFailed, Conflict, NotFound, NotSupported, ParamError
from corral.cluster.schema import Param
from corral.cluster.undo import Reverter
from corral.storage import qemu_img
from corral.storage.cmd import run
from corral.storage.dir import CHUNK, DirPlugin, nospace
from corral.storage.plugin import PATH, StorageFull, check_snap
from corral.storage.volid import VolName

BTRFS = "btrfs"
_TIMEOUT = 60.0
_FMTS = frozenset({"raw", "subvol"})
RAW_FILE = "disk.raw"


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with FileExistsError instead of replacing (an empty) `dst`."""
    ret = _libc.renameat2(
        _AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE
    )
    if ret != 0:
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise FileExistsError(err, os.strerror(err), dst)
        raise OSError(err, os.strerror(err), dst)


def _btrfs(*args: str, timeout: float = _TIMEOUT) -> None:
    run([BTRFS, *args], timeout=timeout)


class BtrfsPlugin(DirPlugin):
    type = "btrfs"
    content = frozenset({"images", "rootdir", "vztmpl", "iso", "backup", "snippets"})
    default_content = frozenset({"images", "rootdir"})
    formats: ClassVar[tuple[str, ...]] = ("raw", "subvol")
    default_format = "raw"
    options = {
        "path": PATH,
        "quotas": Param(
            "boolean", "Limit container roots with btrfs qgroups.", optional=True, default=0
        ),
        "preallocation": Param(
            "string",
            "Preallocation mode for raw images.",
            optional=True,
            enum=("off", "falloc", "full"),
        ),
        "mkdir": Param(
            "boolean", "Create the directory if it doesn't exist.", optional=True, default=1
        ),
    }
    features = {
        "snapshot": {"current": _FMTS, "snap": _FMTS},
        "clone": {"base": _FMTS, "current": _FMTS, "snap": _FMTS},
        "template": {"current": _FMTS},
        "copy": {"base": _FMTS, "current": _FMTS, "snap": _FMTS},
        "resize": {"current": frozenset({"raw"})},
        "sparseinit": {"base": frozenset({"raw"}), "current": frozenset({"raw"})},
        "rename": {"current": _FMTS},
    }

    # -- layout ---------------------------------------------------------------
    def subvol_path(self, cfg: dict[str, Any], vol: VolName) -> str:
        """The subvolume behind a disk volume (raw: its folder; subvol: the root itself)."""
        folder = os.path.join(self.root(cfg), "images", str(vol.vmid))
        if vol.fmt == "raw":
            return os.path.join(folder, vol.name[: -len(".raw")])
        return os.path.join(folder, vol.name)

    def vol_path(self, cfg: dict[str, Any], vol: VolName) -> str:
        if vol.vtype == "images" and vol.fmt == "raw" and vol.vmid is not None:
            return os.path.join(self.subvol_path(cfg, vol), RAW_FILE)
        return super().vol_path(cfg, vol)

    def _disk(self, cfg: dict[str, Any], volname: str) -> tuple[VolName, str]:
        vol = self.parse_volname(cfg, volname=volname)
        if vol.fmt not in _FMTS:
            raise ParamError.one("volume", f"'{volname}' is not a btrfs disk volume")
        sub = self.subvol_path(cfg, vol)
        if not os.path.isdir(sub):
            raise NotFound(what=f"volume '{volname}'")
        return vol, sub

    def _snap_dir(self, sub: str, snap: str) -> str:
        return f"{sub}@{check_snap(snap)}"

    # -- volumes ------------------------------------------------------------------
    def alloc(
        self,
        cfg: dict[str, Any],
        *,
        vmid: int,
        size: int,
        fmt: str | None = None,
        content: str = "images",
        name: str | None = None,
    ) -> str:
        if fmt is not None and fmt not in self.formats:
            raise ParamError.one("format", f"unsupported format '{fmt}' on btrfs storage")
        return super().alloc(cfg, vmid=vmid, size=size, fmt=fmt, content=content, name=name)

    def _create(self, cfg: dict[str, Any], path: str, *, fmt: str, size: int) -> None:
        """Claim the name by creating its subvolume (fails if it exists), then fill it."""
        sub = path[: -len(".raw")] if fmt == "raw" else path
        if os.path.lexists(sub):
            raise FileExistsError(sub)
        try:
            _btrfs("subvolume", "create", sub)
        except CommandFailed as exc:
            if os.path.lexists(sub):  # a concurrent alloc won the name
                raise FileExistsError(sub) from exc
            raise
        with Reverter() as undo:
            undo.add(lambda: self._delete_subvol(sub))
            if fmt == "subvol":
                self._init_subvol(cfg, sub, size=size)
            else:
                try:
                    qemu_img.create(
                        os.path.join(sub, RAW_FILE),
                        fmt="raw",
                        size=size,
                        preallocation=cfg.get("preallocation"),
                    )
                except CommandFailed as exc:
                    if nospace(exc):
                        raise StorageFull(
                            detail=f"{size} bytes for {os.path.basename(sub)}"
                        ) from exc
                    raise
            undo.success()

    def _init_subvol(self, cfg: dict[str, Any], path: str, *, size: int) -> None:
        os.chmod(path, 0o755)
        if size and int(cfg.get("quotas") or 0):
            _btrfs("qgroup", "limit", str(size), path)

    def _delete_subvol(self, sub: str) -> None:
        # --commit-after: the space is really free when free() returns (disk-full retries).
        _btrfs("subvolume", "delete", "--commit-after", sub, timeout=120.0)

    def free(self, cfg: dict[str, Any], *, volname: str) -> None:
        if self.parse_volname(cfg, volname=volname).fmt not in _FMTS:
            return super().free(cfg, volname=volname)  # iso, templates, backups: plain files
        _, sub = self._disk(cfg, volname)
        for snap in self.snapshots(cfg, volname=volname):
            self._delete_subvol(self._snap_dir(sub, snap))
        self._delete_subvol(sub)
        try:
            os.rmdir(os.path.dirname(sub))  # the VMID folder once its last volume is gone
        except OSError:
            pass

    def size(self, cfg: dict[str, Any], *, volname: str) -> int:
        vol, sub = self._disk(cfg, volname)
        return os.stat(os.path.join(sub, RAW_FILE)).st_size if vol.fmt == "raw" else 0

    def _image_entry(self, cfg: dict[str, Any], owner: str, fname: str) -> dict[str, Any] | None:
        # A raw disk's folder is `vm-N-disk-M`: list it under its volume name `...raw`.
        if "@" in fname or "." in fname:
            entry = super()._image_entry(cfg, owner, fname) if fname.endswith(".subvol") else None
            return entry
        if not os.path.isfile(os.path.join(self.root(cfg), "images", owner, fname, RAW_FILE)):
            return None
        return super()._image_entry(cfg, owner, f"{fname}.raw")

    def mount_rootdir(self, cfg: dict[str, Any], *, volname: str) -> str:
        vol, sub = self._disk(cfg, volname)
        if vol.fmt != "subvol":
            raise NotSupported(what="container roots in raw images on btrfs storage")
        return sub

    # -- snapshots --------------------------------------------------------------------
    def snapshot(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        check_snap(snap)
        self.require_feature(cfg, feature="snapshot", volname=volname)
        _, sub = self._disk(cfg, volname)
        target = self._snap_dir(sub, snap)
        if os.path.lexists(target):
            raise Conflict(f"snapshot '{snap}' of '{volname}' already exists")
        _btrfs("subvolume", "snapshot", "-r", sub, target)

    def _existing_snap(self, cfg: dict[str, Any], volname: str, snap: str) -> tuple[str, str]:
        _, sub = self._disk(cfg, volname)
        target = self._snap_dir(sub, snap)
        if not os.path.isdir(target):
            raise NotFound(what=f"snapshot '{snap}' of '{volname}'")
        return sub, target

    def snapshot_delete(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        self._delete_subvol(self._existing_snap(cfg, volname, snap)[1])

    def snapshot_rollback(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        """Swap the live subvolume for a writable copy of the snapshot, undoably."""
        sub, target = self._existing_snap(cfg, volname, snap)
        fresh, old = f"{sub}@.rollback-new", f"{sub}@.rollback-old"
        for stale in (fresh, old):  # left by a crash in the middle of an earlier rollback
            if os.path.isdir(stale):
                self._delete_subvol(stale)
        with Reverter() as undo:
            _btrfs("subvolume", "snapshot", target, fresh)
            undo.add(lambda: self._delete_subvol(fresh))
            os.rename(sub, old)
            undo.add(lambda: os.rename(old, sub))
            os.rename(fresh, sub)
            undo.add(lambda: os.rename(sub, fresh))
            undo.success()
        self._delete_subvol(old)

    def snapshots(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        _, sub = self._disk(cfg, volname)
        prefix = os.path.basename(sub) + "@"
        out = []
        for entry in sorted(os.listdir(os.path.dirname(sub))):
            if entry.startswith(prefix):
                name = entry[len(prefix) :]
                if name[:1].isalpha():  # temporaries start with '.'
                    out.append(name)
        return out

    # -- templates, clones, copies -------------------------------------------------
    def create_base(self, cfg: dict[str, Any], *, volname: str) -> str:
        vol, sub = self._disk(cfg, volname)
        if vol.isbase:
            raise ParamError.one("volume", f"'{volname}' is already a base volume")
        if self.snapshots(cfg, volname=volname):
            raise Conflict(f"'{volname}' has snapshots: delete them before making it a base")
        new = vol.name.replace("vm-", "base-", 1).replace("subvol-", "basevol-", 1)
        new_vol = self.parse_volname(cfg, volname=f"{vol.vmid}/{new}")
        dst = self.subvol_path(cfg, new_vol)
        if os.path.lexists(dst):
            raise Conflict(f"volume '{vol.vmid}/{new}' already exists")
        with Reverter() as undo:
            os.rename(sub, dst)
            undo.add(lambda: os.rename(dst, sub))
            # A base's data must never change under what was cloned from it.
            _btrfs("property", "set", "-ts", dst, "ro", "true")
            undo.success()
        return f"{vol.vmid}/{new}"

    def _new_volume_from(
        self, cfg: dict[str, Any], src: str, *, vol: VolName, vmid: int, fill: Any
    ) -> str:
        """`fill(src, tmp)` makes the subvolume under a private name, then it takes a free one.

        `btrfs subvolume snapshot SRC DST` nests the snapshot inside DST when DST
        already exists, so a name a concurrent alloc just took must never be the
        target: the new subvolume is renamed into place with RENAME_NOREPLACE.
        """
        subvol = vol.fmt == "subvol"
        folder = os.path.join(self.root(cfg), "images", str(vmid))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f"@.new-{uuid.uuid4().hex}")  # '@': never a volume name
        with Reverter() as undo:
            undo.add(lambda: _rmdir_if_empty(folder))
            try:
                fill(src, tmp)
            except CommandFailed as exc:
                if nospace(exc):
                    raise StorageFull(detail=f"copy of {vol.name}") from exc
                raise
            finally:
                if os.path.isdir(tmp):
                    undo.add(lambda: self._delete_subvol(tmp))
            for _ in range(100):
                fname = self._pick_name(cfg, vmid, "subvol" if subvol else "raw", None)
                new = f"{vmid}/{fname}"
                try:
                    rename_noreplace(
                        tmp, self.subvol_path(cfg, self.parse_volname(cfg, volname=new))
                    )
                except FileExistsError:
                    continue  # a concurrent alloc took this name: the next one
                undo.success()
                return new
        raise Conflict(f"no free disk name for VM {vmid}")

    def _source(self, cfg: dict[str, Any], volname: str, snap: str | None) -> tuple[VolName, str]:
        vol, sub = self._disk(cfg, volname)
        if snap is not None:
            sub = self._existing_snap(cfg, volname, snap)[1]
        return vol, sub

    def clone_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        self.require_feature(cfg, feature="clone", volname=volname, snap=snap)
        vol, src = self._source(cfg, volname, snap)

        def fill(src: str, dst: str) -> None:
            _btrfs("subvolume", "snapshot", src, dst)

        return self._new_volume_from(cfg, src, vol=vol, vmid=vmid, fill=fill)

    def copy_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        """A new subvolume with the data copied file by file (no extents shared)."""
        self.require_feature(cfg, feature="copy", volname=volname, snap=snap)
        vol, src = self._source(cfg, volname, snap)

        def fill(src: str, dst: str) -> None:
            _btrfs("subvolume", "create", dst)
            with Reverter() as undo:
                undo.add(lambda: self._delete_subvol(dst))
                run(
                    ["cp", "-a", "--reflink=never", "--sparse=always", "--", f"{src}/.", dst],
                    timeout=3600.0,
                )
                os.chmod(dst, os.stat(src).st_mode & 0o7777)
                undo.success()

        return self._new_volume_from(cfg, src, vol=vol, vmid=vmid, fill=fill)

    # -- streams ----------------------------------------------------------------
    def export_formats(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        vol = self.parse_volname(cfg, volname=volname)
        return ["tar"] if vol.fmt == "subvol" else ["raw"]

    def export(
        self,
        cfg: dict[str, Any],
        *,
        volname: str,
        fmt: str,
        out: IO[bytes],
        snap: str | None = None,
    ) -> None:
        if snap is None:
            return super().export(cfg, volname=volname, fmt=fmt, out=out)
        vol, src = self._source(cfg, volname, snap)
        if fmt not in self.export_formats(cfg, volname=volname):
            raise ParamError.one("format", f"cannot export '{volname}' as {fmt}")
        if fmt == "raw":
            with open(os.path.join(src, RAW_FILE), "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
            return
        with tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(src, arcname=".")

    def import_(
        self,
        cfg: dict[str, Any],
        *,
        stream: IO[bytes],
        fmt: str,
        vmid: int,
        content: str = "images",
        size: int | None = None,
    ) -> str:
        if fmt not in ("raw", "tar"):
            raise ParamError.one("format", f"cannot import format {fmt} into btrfs storage")
        return super().import_(cfg, stream=stream, fmt=fmt, vmid=vmid, content=content, size=size)


def _rmdir_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass  # not empty: other volumes of this VMID live there
