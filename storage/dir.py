"""`dir`: a directory laid out as Proxmox lays out a dir storage.

    PATH/images/VMID/vm-VMID-disk-N.{raw,qcow2}   VM disks (qemu-img)
    PATH/images/VMID/subvol-VMID-disk-N.subvol/   container roots (plain directories)
    PATH/template/iso/  PATH/template/cache/  PATH/dump/  PATH/snippets/

Snapshots and linked clones need qcow2 (internal snapshots; backing files on
a base image). `shared: 1` says every node mounts the same directory (NFS...).
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
from typing import IO, Any, ClassVar

from corral.cluster.errors import CommandFailed, Conflict, NotFound, NotSupported, ParamError
from corral.cluster.schema import Param
from corral.cluster.undo import Reverter
from corral.storage import qemu_img
from corral.storage.cmd import run
from corral.storage.plugin import PATH, StorageFull, StoragePlugin, check_size, check_snap
from corral.storage.volid import (
    CONTENT_DIRS,
    VolName,
    check_content,
    check_disk_name,
    disk_name,
    parse_path_volname,
)

_DISK_FMTS = frozenset({"raw", "qcow2", "vmdk"})
_ALL_FMTS = _DISK_FMTS | {"subvol"}
CHUNK = 1 << 20


def nospace(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, CommandFailed) and "No space left" in str(exc)


class DirPlugin(StoragePlugin):
    type = "dir"
    content = frozenset({"images", "rootdir", "vztmpl", "iso", "backup", "snippets"})
    default_content = frozenset({"images", "rootdir", "vztmpl", "iso", "backup", "snippets"})
    formats: ClassVar[tuple[str, ...]] = ("raw", "qcow2", "vmdk", "subvol")
    default_format = "raw"
    options = {
        "path": PATH,
        "format": Param(
            "string",
            "Default image format.",
            optional=True,
            enum=("raw", "qcow2", "vmdk", "subvol"),
        ),
        "preallocation": Param(
            "string",
            "Preallocation mode for raw and qcow2 images.",
            optional=True,
            enum=("off", "metadata", "falloc", "full"),
        ),
        "mkdir": Param(
            "boolean", "Create the directory if it doesn't exist.", optional=True, default=1
        ),
    }
    features = {
        "snapshot": {"current": frozenset({"qcow2"}), "snap": frozenset({"qcow2"})},
        "clone": {"base": frozenset({"qcow2", "raw", "vmdk"})},
        "template": {"current": _ALL_FMTS},
        "copy": {"base": _ALL_FMTS, "current": _ALL_FMTS, "snap": frozenset({"qcow2"})},
        "resize": {"current": _DISK_FMTS},
        "sparseinit": {"base": frozenset({"qcow2", "raw"}), "current": frozenset({"qcow2", "raw"})},
        "rename": {"current": _ALL_FMTS},
    }

    # -- layout ---------------------------------------------------------------
    def parse_volname(self, cfg: dict[str, Any], *, volname: str) -> VolName:
        return parse_path_volname(volname)

    def root(self, cfg: dict[str, Any]) -> str:
        return str(cfg["path"])

    def vol_path(self, cfg: dict[str, Any], vol: VolName) -> str:
        sub = CONTENT_DIRS[vol.vtype]
        if vol.vmid is not None and vol.vtype in ("images", "rootdir"):
            return os.path.join(self.root(cfg), sub, str(vol.vmid), vol.name)
        return os.path.join(self.root(cfg), sub, vol.name)

    def path_of(self, cfg: dict[str, Any], volname: str) -> tuple[VolName, str]:
        vol = self.parse_volname(cfg, volname=volname)
        return vol, self.vol_path(cfg, vol)

    def existing(self, cfg: dict[str, Any], volname: str) -> tuple[VolName, str]:
        vol, path = self.path_of(cfg, volname)
        if not os.path.lexists(path):
            raise NotFound(what=f"volume '{volname}'")
        return vol, path

    def activate(self, cfg: dict[str, Any]) -> None:
        root = self.root(cfg)
        if not os.path.isdir(root):
            if not int(cfg.get("mkdir", 1)):
                raise NotFound(what=f"storage path '{root}'")
            os.makedirs(root, exist_ok=True)
        for sub in sorted(set(CONTENT_DIRS.values())):
            os.makedirs(os.path.join(root, sub), exist_ok=True)

    def status(self, cfg: dict[str, Any]) -> dict[str, Any]:
        try:
            st = os.statvfs(self.root(cfg))
        except OSError:
            return {"total": 0, "used": 0, "avail": 0, "active": False}
        total = st.f_blocks * st.f_frsize
        avail = st.f_bavail * st.f_frsize
        return {
            "total": total,
            "used": total - st.f_bfree * st.f_frsize,
            "avail": avail,
            "active": True,
        }

    # -- volumes ------------------------------------------------------------------
    def _pick_name(self, cfg: dict[str, Any], vmid: int, fmt: str, name: str | None) -> str:
        subvol = fmt == "subvol"
        if name is not None:
            m = check_disk_name(name, vmid=vmid)
            if (m.group(4) or ("subvol" if m.group(1) == "subvol" else None)) != fmt:
                raise ParamError.one("name", f"name '{name}' does not match format {fmt}")
            return name
        folder = os.path.join(self.root(cfg), "images", str(vmid))
        taken = {e.split(".")[0] for e in _listdir(folder)}
        for n in range(10000):
            if disk_name(vmid, n, subvol=subvol) not in taken:
                return disk_name(vmid, n, subvol=subvol, fmt=fmt)
        raise Conflict(f"no free disk name for VM {vmid}")

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
        check_size(size)
        check_content(content, self.enabled_content(cfg))
        if content not in ("images", "rootdir"):
            raise ParamError.one("content", f"cannot allocate volumes of content {content}")
        fmt = fmt or (
            "subvol" if content == "rootdir" else cfg.get("format") or self.default_format
        )
        if fmt not in self.formats:
            raise ParamError.one("format", f"unsupported format '{fmt}'")
        if (fmt == "subvol") != (content == "rootdir"):
            raise ParamError.one("format", f"format {fmt} cannot hold content {content}")
        folder = os.path.join(self.root(cfg), "images", str(vmid))
        self._pick_name(cfg, vmid, fmt, name)  # a bad name fails before anything exists
        os.makedirs(folder, exist_ok=True)
        try:
            for _ in range(100):
                fname = self._pick_name(cfg, vmid, fmt, name)
                try:
                    self._create(cfg, os.path.join(folder, fname), fmt=fmt, size=size)
                except FileExistsError:
                    if name is not None:
                        raise Conflict(f"volume '{vmid}/{name}' already exists") from None
                    continue  # a concurrent alloc took this index: try the next one
                return f"{vmid}/{fname}"
            raise Conflict(f"no free disk name for VM {vmid}")
        except BaseException:
            _rmdir_if_empty(folder)
            raise

    def _create(self, cfg: dict[str, Any], path: str, *, fmt: str, size: int) -> None:
        """Claim the name atomically (O_EXCL / mkdir), then fill it; undo on failure."""
        with Reverter() as undo:
            if fmt == "subvol":
                os.mkdir(path, 0o755)
                undo.add(lambda: shutil.rmtree(path, ignore_errors=True))
                self._make_subvol(path, size=size)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
                undo.add(lambda: os.unlink(path))
                try:
                    qemu_img.create(
                        path, fmt=fmt, size=size, preallocation=cfg.get("preallocation")
                    )
                except CommandFailed as exc:
                    if nospace(exc):
                        raise StorageFull(
                            detail=f"{size} bytes for {os.path.basename(path)}"
                        ) from exc
                    raise
            undo.success()

    def _make_subvol(self, path: str, *, size: int) -> None:
        """A plain directory has no quota: `size` is advisory only."""

    def free(self, cfg: dict[str, Any], *, volname: str) -> None:
        vol, path = self.existing(cfg, volname)
        if vol.isbase and self._children(cfg, vol):
            raise Conflict(f"base volume '{volname}' is still used by linked clones")
        if os.path.isdir(path) and not os.path.islink(path):
            self._remove_subvol(path)
        else:
            os.unlink(path)
        folder = os.path.dirname(path)
        if vol.vmid is not None:
            try:
                os.rmdir(folder)  # the VMID folder once its last volume is gone
            except OSError:
                pass

    def _remove_subvol(self, path: str) -> None:
        shutil.rmtree(path)

    def _children(self, cfg: dict[str, Any], base: VolName) -> list[str]:
        return [
            e["volname"]
            for e in self.list_volumes(cfg, content="images")
            if e["volname"].startswith(f"{base.vmid}/{base.name}/")
        ]

    def size(self, cfg: dict[str, Any], *, volname: str) -> int:
        vol, path = self.existing(cfg, volname)
        if vol.fmt == "subvol":
            return 0
        if vol.fmt == "raw" or vol.fmt is None:
            return os.stat(path).st_size
        return int(qemu_img.info(path, fmt=vol.fmt)["virtual-size"])

    def resize(self, cfg: dict[str, Any], *, volname: str, size: int) -> None:
        check_size(size)
        self.require_feature(cfg, feature="resize", volname=volname)
        vol, path = self.existing(cfg, volname)
        if size < self.size(cfg, volname=volname):
            raise ParamError.one("size", "shrinking disks is not supported")
        qemu_img.resize(path, fmt=vol.fmt or "raw", size=size)

    def list_volumes(
        self, cfg: dict[str, Any], *, content: str | None = None, vmid: int | None = None
    ) -> list[dict[str, Any]]:
        root = self.root(cfg)
        out: list[dict[str, Any]] = []
        enabled = self.enabled_content(cfg)
        kinds = [content] if content else sorted(enabled)
        if any(k in ("images", "rootdir") for k in kinds):
            images = os.path.join(root, "images")
            for owner in _listdir(images):
                if not owner.isdigit() or (vmid is not None and int(owner) != vmid):
                    continue
                for fname in _listdir(os.path.join(images, owner)):
                    entry = self._image_entry(cfg, owner, fname)
                    if entry and entry["content"] in kinds:
                        out.append(entry)
        for kind in ("iso", "vztmpl", "backup", "snippets"):
            if kind not in kinds or kind not in enabled:
                continue
            for fname in _listdir(os.path.join(root, CONTENT_DIRS[kind])):
                try:
                    vol = self.parse_volname(cfg, volname=f"{kind}/{fname}")
                except ParamError:
                    continue
                if vmid is not None and vol.vmid != vmid:
                    continue
                st = os.stat(self.vol_path(cfg, vol))
                entry = {
                    "volname": f"{kind}/{fname}",
                    "content": kind,
                    "format": _file_format(fname, kind),
                    "size": st.st_size,
                    "ctime": int(st.st_mtime),
                }
                if vol.vmid is not None:
                    entry["vmid"] = vol.vmid
                out.append(entry)
        return sorted(out, key=lambda e: e["volname"])

    def _image_entry(self, cfg: dict[str, Any], owner: str, fname: str) -> dict[str, Any] | None:
        volname = f"{owner}/{fname}"
        try:
            vol = self.parse_volname(cfg, volname=volname)
        except ParamError:
            return None  # not ours (a stray file): never listed, never touched
        path = self.vol_path(cfg, vol)
        size = 0
        if vol.fmt == "qcow2":
            try:
                info = qemu_img.info(path, fmt="qcow2")
            except CommandFailed:
                return None
            size = int(info["virtual-size"])
            backing = info.get("backing-filename")
            if backing:  # linked clone: Proxmox names it BASEVMID/BASENAME/VMID/NAME
                base_vmid = os.path.basename(os.path.dirname(backing))
                volname = f"{base_vmid}/{os.path.basename(backing)}/{volname}"
        elif vol.fmt != "subvol":
            size = os.stat(path).st_size
        return {
            "volname": volname,
            "content": vol.vtype,
            "format": vol.fmt,
            "size": size,
            "vmid": vol.vmid,
            "ctime": int(os.stat(path).st_mtime),
        }

    def qemu_disk(self, cfg: dict[str, Any], *, volname: str) -> dict[str, Any]:
        vol, path = self.existing(cfg, volname)
        if vol.vtype not in ("images", "iso"):
            raise ParamError.one("volume", f"'{volname}' is not a disk image")
        return {"kind": "file", "path": path, "format": vol.fmt or "raw"}

    def mount_rootdir(self, cfg: dict[str, Any], *, volname: str) -> str:
        vol, path = self.existing(cfg, volname)
        if vol.fmt != "subvol":
            raise NotSupported(what=f"container roots in {vol.fmt} images on {self.type} storage")
        return path

    def file_path(self, cfg: dict[str, Any], *, volname: str) -> str:
        return self.path_of(cfg, volname)[1]

    # -- snapshots (qcow2 internal snapshots) ---------------------------------------
    def snapshot(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        check_snap(snap)
        self.require_feature(cfg, feature="snapshot", volname=volname)
        _, path = self.existing(cfg, volname)
        if snap in qemu_img.snapshots(path):
            raise Conflict(f"snapshot '{snap}' already exists")
        qemu_img.snapshot(path, op="-c", snap=snap)

    def _snap_path(self, cfg: dict[str, Any], volname: str, snap: str) -> str:
        check_snap(snap)
        self.require_feature(cfg, feature="snapshot", volname=volname, snap=snap)
        _, path = self.existing(cfg, volname)
        if snap not in qemu_img.snapshots(path):
            raise NotFound(what=f"snapshot '{snap}' of '{volname}'")
        return path

    def snapshot_delete(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        qemu_img.snapshot(self._snap_path(cfg, volname, snap), op="-d", snap=snap)

    def snapshot_rollback(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        qemu_img.snapshot(self._snap_path(cfg, volname, snap), op="-a", snap=snap)

    def snapshots(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        vol, path = self.existing(cfg, volname)
        return qemu_img.snapshots(path) if vol.fmt == "qcow2" else []

    # -- templates, clones, copies -------------------------------------------------
    def create_base(self, cfg: dict[str, Any], *, volname: str) -> str:
        """Turn a VM disk into a read-only base image (a template's disk)."""
        vol, path = self.existing(cfg, volname)
        if vol.isbase or vol.base:
            raise ParamError.one("volume", f"'{volname}' is already a base or a linked clone")
        self.require_feature(cfg, feature="template", volname=volname)
        new = vol.name.replace("vm-", "base-", 1).replace("subvol-", "basevol-", 1)
        dst = os.path.join(os.path.dirname(path), new)
        if os.path.lexists(dst):
            raise Conflict(f"volume '{vol.vmid}/{new}' already exists")
        os.rename(path, dst)
        if vol.fmt != "subvol":
            os.chmod(dst, 0o444)  # a base's backing data must never change under its clones
        return f"{vol.vmid}/{new}"

    def clone_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        if snap:
            raise NotSupported(what=f"linked clones from snapshots on {self.type} storage")
        vol = self.require_feature(cfg, feature="clone", volname=volname)
        _, src = self.existing(cfg, volname)
        folder = os.path.join(self.root(cfg), "images", str(vmid))
        os.makedirs(folder, exist_ok=True)
        for _ in range(100):
            fname = self._pick_name(cfg, vmid, "qcow2", None)
            dst = os.path.join(folder, fname)
            try:
                os.close(os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
            except FileExistsError:
                continue
            with Reverter() as undo:
                undo.add(lambda p=dst: os.unlink(p))  # type: ignore[misc]
                # A relative backing path keeps the storage movable (../BASEVMID/BASENAME).
                qemu_img.create(dst, fmt="qcow2", size=0, backing=f"../{vol.vmid}/{vol.name}")
                undo.success()
            return f"{vol.vmid}/{vol.name}/{vmid}/{fname}"
        raise Conflict(f"no free disk name for VM {vmid}")

    def copy_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        vol = self.require_feature(cfg, feature="copy", volname=volname, snap=snap)
        _, src = self.existing(cfg, volname)
        fmt = vol.fmt or "raw"
        new = self.alloc(cfg, vmid=vmid, size=0, fmt=fmt, content=vol.vtype)
        with Reverter() as undo:
            undo.add(lambda: self.free(cfg, volname=new))
            dst = self.path_of(cfg, new)[1]
            if fmt == "subvol":
                self._copy_tree(src, dst)
            else:
                qemu_img.convert(src, dst, src_fmt=fmt, dst_fmt=fmt, snap=snap)
            undo.success()
        return new

    def _copy_tree(self, src: str, dst: str) -> None:
        # cp -a keeps owners, modes, xattrs and device nodes of a container root.
        run(["cp", "-a", "--reflink=auto", "--", f"{src}/.", dst], timeout=3600.0)

    # -- streams ----------------------------------------------------------------
    def export_formats(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        vol = self.parse_volname(cfg, volname=volname)
        if vol.fmt == "subvol":
            return ["tar"]
        return ["raw", "qcow2"] if vol.fmt == "qcow2" else ["raw"]

    def export(
        self,
        cfg: dict[str, Any],
        *,
        volname: str,
        fmt: str,
        out: IO[bytes],
        snap: str | None = None,
    ) -> None:
        vol, path = self.existing(cfg, volname)
        if fmt not in self.export_formats(cfg, volname=volname):
            raise ParamError.one("format", f"cannot export '{volname}' as {fmt}")
        if fmt == "tar":
            with tarfile.open(fileobj=out, mode="w|") as tar:
                tar.add(path, arcname=".")
            return
        if vol.fmt == fmt and not snap:
            _copy_file(path, out)
            return
        # qemu-img cannot write to a pipe: convert beside the image, stream, remove.
        tmp = f"{path}.export-{os.getpid()}.tmp"
        try:
            qemu_img.convert(path, tmp, src_fmt=vol.fmt or "raw", dst_fmt=fmt, snap=snap)
            _copy_file(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

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
        if fmt not in ("raw", "qcow2", "tar"):
            raise ParamError.one("format", f"cannot import format {fmt}")
        if (fmt == "tar") != (content == "rootdir"):
            raise ParamError.one("format", f"format {fmt} cannot hold content {content}")
        new = self.alloc(
            cfg, vmid=vmid, size=0, fmt="subvol" if fmt == "tar" else fmt, content=content
        )
        with Reverter() as undo:
            undo.add(lambda: self.free(cfg, volname=new))
            dst = self.path_of(cfg, new)[1]
            if fmt == "tar":
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    extract_tar(tar, dst)
            else:
                try:
                    with open(dst, "wb") as f:
                        copy_sparse(stream, f)
                except OSError as exc:
                    if nospace(exc):
                        raise StorageFull(detail=f"import of {new}") from exc
                    raise
                if fmt == "qcow2":
                    qemu_img.info(dst, fmt="qcow2")  # refuse a stream that is not a qcow2
            undo.success()
        return new


SPARSE_PIECE = 64 << 10


def extract_tar(tar: tarfile.TarFile, dst: str) -> None:
    """Unpack a container root, refusing members that would land outside `dst`.

    Debian 12's Python 3.11.2 predates `extractall(filter=...)`, so the check
    the 'tar' filter does is done here: every member (and every hard link's
    target) must resolve inside `dst`, following the symlinks unpacked so far.
    """
    root = os.path.realpath(dst)
    for member in tar:
        for name in (member.name, member.linkname if member.islnk() else None):
            if name is None:
                continue
            where = os.path.realpath(os.path.join(root, name.lstrip("/")))
            if where != root and not where.startswith(root + os.sep):
                raise ParamError.one("stream", f"archive member '{member.name}' leaves the root")
        tar.extract(member, root, numeric_owner=True)


def copy_sparse(stream: IO[bytes], out: IO[bytes]) -> int:
    """Copy `stream` into the new file `out`, leaving zero blocks as holes (a
    restored disk image takes the space its data takes); returns the size."""
    size = 0
    while True:
        data = stream.read(CHUNK)
        if not data:
            break
        view = memoryview(data)
        start = 0  # of the run of data pieces not yet written
        for i in range(0, len(data), SPARSE_PIECE):
            if not is_zero(data, i, i + SPARSE_PIECE):
                continue
            if start < i:
                out.write(view[start:i])
            out.seek(min(SPARSE_PIECE, len(data) - i), os.SEEK_CUR)
            start = i + SPARSE_PIECE
        if start < len(data):
            out.write(view[start:])
        size += len(data)
    out.truncate(size)
    return size


def is_zero(data: bytes, start: int, end: int) -> bool:
    """Whether data[start:end] is all zero bytes: the ends first (data is rarely
    zero there), then one C scan."""
    end = min(end, len(data))
    if data[start] or data[end - 1]:
        return False
    return not data[start:end].lstrip(b"\0")


def _copy_file(path: str, out: IO[bytes]) -> None:
    with open(path, "rb") as f:
        shutil.copyfileobj(f, out, CHUNK)


def _rmdir_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # not empty (other volumes of the guest), or already gone


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _file_format(fname: str, kind: str) -> str:
    if kind == "iso":
        return "iso"
    for ext in ("tar.gz", "tar.xz", "tar.zst", "vma.zst", "vma.gz", "tgz", "tar", "vma"):
        if fname.endswith("." + ext):
            return ext
    return "raw"
