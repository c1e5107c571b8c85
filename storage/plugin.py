"""The storage plugin contract (Proxmox's pve-storage plugins, Incus's storage drivers).

A plugin is stateless: every method receives its storage's config (the JSON
form of a storage.cfg section, `{"type": "dir", "path": ..., "content": ...}`)
as the first argument and everything else as keyword-only arguments. One
instance per type is shared by all threads.

Capabilities are data on the class: the content types offered and enabled by
default, the disk formats, whether the storage is shared by nature, the
options its config takes (`Param`s, so `POST /storage` validates per type),
and a feature table answering "can this volume snapshot / clone / copy /
resize / sparseinit?". Generic code reads those, never a plugin's type name.
Optional operations raise NotSupported.

What must hold after each call:
- `alloc` returns a new volume name; on failure nothing is left behind, and two
  concurrent allocations of one explicit name: exactly one wins (Conflict).
- `free` removes the volume and its snapshots; freeing a missing volume is NotFound.
- `resize` only grows.
- `snapshot_rollback` leaves the volume's data as it was at the snapshot.
- `clone_image` returns a new volume sharing data with the source where the
  backend can (linked), `copy_image` a full independent copy.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, ClassVar

from corral.cluster.errors import CorralError, NotSupported, ParamError
from corral.cluster.schema import Param, Schema
from corral.storage.volid import CONTENT_TYPES, VolName, parse_block_volname


class StorageFull(CorralError):
    """The backend ran out of space; nothing of the volume was left behind."""

    status = 507
    msg_fmt = "not enough space on the storage: %(detail)s"


NOSPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def out_of_space(storage: str, what: str) -> Iterator[None]:
    """A full disk met while `what` was written to `storage` becomes a StorageFull
    (507) naming both: a backend knows neither, and a bare "[Errno 28] No space
    left on device" does not say which of a node's disks filled up."""
    try:
        yield
    except StorageFull as err:
        if err.kwargs.get("named"):
            raise
        detail = err.kwargs.get("detail") or err.message
        raise StorageFull(
            f"not enough space on storage '{storage}' for {what}: {detail}", named=True
        ) from err
    except OSError as err:
        if err.errno not in NOSPACE:
            raise
        raise StorageFull(
            f"not enough space on storage '{storage}' for {what}: {err.strerror}", named=True
        ) from err


FEATURES = ("snapshot", "clone", "copy", "resize", "sparseinit", "template", "rename")

# Options every storage type takes (Proxmox's common storage.cfg keys).
COMMON_OPTIONS: dict[str, Param] = {
    "type": Param("string", "Storage type."),
    "content": Param(
        "string",
        "Allowed content types (comma separated).",
        optional=True,
        pattern=r"(?:(?:images|rootdir|vztmpl|iso|backup|snippets|none),?)*",
    ),
    "nodes": Param(
        "string",
        "List of nodes (comma separated).",
        optional=True,
        pattern=r"(?:[a-zA-Z0-9][a-zA-Z0-9\-]*,?)*",
    ),
    "disable": Param("boolean", "Flag to disable the storage.", optional=True, default=0),
    "shared": Param("boolean", "Mark the storage as shared by all nodes.", optional=True),
    # The retention a backup onto this storage applies when its job or call sets none.
    "prune-backups": Param(
        "string",
        "The retention options with shorter intervals are processed first.",
        optional=True,
        pattern=r"keep-(?:all|last|hourly|daily|weekly|monthly|yearly)=\d{1,6}"
        r"(?:,keep-(?:all|last|hourly|daily|weekly|monthly|yearly)=\d{1,6})*",
    ),
}
PATH = Param("string", "File system path.", pattern=r"/[A-Za-z0-9_./\-]*", max_length=255)
POOL = Param("string", "Pool.", pattern=r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*", max_length=200)


def content_set(cfg: dict[str, Any], default: frozenset[str]) -> frozenset[str]:
    raw = cfg.get("content")
    if raw is None:
        return default
    return frozenset(c for c in str(raw).split(",") if c and c != "none")


class StoragePlugin:
    """Base class. Override what the backend can do; the rest raises NotSupported."""

    type: ClassVar[str] = ""
    content: ClassVar[frozenset[str]] = frozenset()  # offered
    default_content: ClassVar[frozenset[str]] = frozenset()  # enabled when config omits it
    formats: ClassVar[tuple[str, ...]] = ("raw",)
    default_format: ClassVar[str] = "raw"
    shared_by_nature: ClassVar[bool] = False  # rbd: every node sees the same pool
    options: ClassVar[dict[str, Param]] = {}
    # feature -> {"current" | "snap" | "base": formats for which it works}
    features: ClassVar[dict[str, dict[str, frozenset[str]]]] = {}

    # -- declarations -----------------------------------------------------
    @classmethod
    def schema(cls) -> Schema:
        return Schema({**COMMON_OPTIONS, **cls.options})

    @classmethod
    def check_config(cls, cfg: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
        """Validate a config for this type; ParamError naming each bad key."""
        out = cls.schema().validate(cfg, partial=partial)
        if "content" in out:
            bad = content_set(out, frozenset()) - cls.content
            if bad:
                raise ParamError.one(
                    "content", f"storage type {cls.type} does not support {','.join(sorted(bad))}"
                )
        return out

    def enabled_content(self, cfg: dict[str, Any]) -> frozenset[str]:
        return content_set(cfg, self.default_content) & self.content

    def is_shared(self, cfg: dict[str, Any]) -> bool:
        return self.shared_by_nature or bool(int(cfg.get("shared") or 0))

    def parse_volname(self, cfg: dict[str, Any], *, volname: str) -> VolName:
        return parse_block_volname(volname)

    def has_feature(
        self, cfg: dict[str, Any], *, feature: str, volname: str, snap: str | None = None
    ) -> bool:
        """Proxmox's volume_has_feature: looked up in `features`, never in ifs."""
        vol = self.parse_volname(cfg, volname=volname)
        key = "snap" if snap else ("base" if vol.isbase else "current")
        return (vol.fmt or "") in self.features.get(feature, {}).get(key, frozenset())

    def require_feature(
        self, cfg: dict[str, Any], *, feature: str, volname: str, snap: str | None = None
    ) -> VolName:
        if not self.has_feature(cfg, feature=feature, volname=volname, snap=snap):
            raise NotSupported(what=f"{feature} of {self.type} volume '{volname}'")
        return self.parse_volname(cfg, volname=volname)

    # -- storage ----------------------------------------------------------
    def activate(self, cfg: dict[str, Any]) -> None:
        """Make the storage usable on this node (create folders, check the pool)."""

    def deactivate(self, cfg: dict[str, Any]) -> None:
        """Undo `activate` where that means something (mounts, connections)."""

    def status(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """{"total", "used", "avail" (bytes), "active" (bool)}."""
        raise NotSupported(what=f"status of {self.type} storage")

    # -- volumes ----------------------------------------------------------
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
        """Create a volume of `size` bytes (0 for a subvol without quota); returns its name."""
        raise NotSupported(what=f"allocation on {self.type} storage")

    def free(self, cfg: dict[str, Any], *, volname: str) -> None:
        raise NotSupported(what=f"free on {self.type} storage")

    def resize(self, cfg: dict[str, Any], *, volname: str, size: int) -> None:
        raise NotSupported(what=f"resize on {self.type} storage")

    def size(self, cfg: dict[str, Any], *, volname: str) -> int:
        raise NotSupported(what=f"size on {self.type} storage")

    def list_volumes(
        self, cfg: dict[str, Any], *, content: str | None = None, vmid: int | None = None
    ) -> list[dict[str, Any]]:
        """Entries {"volname", "content", "format", "size", "vmid"?} of this storage."""
        raise NotSupported(what=f"listing {self.type} storage")

    def qemu_disk(self, cfg: dict[str, Any], *, volname: str) -> dict[str, Any]:
        raise NotSupported(what=f"QEMU disks on {self.type} storage")

    def mount_rootdir(self, cfg: dict[str, Any], *, volname: str) -> str:
        raise NotSupported(what=f"container roots on {self.type} storage")

    def unmount_rootdir(self, cfg: dict[str, Any], *, volname: str) -> None:
        """Subvolume/dataset roots are always mounted: nothing to do by default."""

    def file_path(self, cfg: dict[str, Any], *, volname: str) -> str:
        raise NotSupported(what=f"file paths on {self.type} storage")

    # -- snapshots and clones -----------------------------------------------
    def snapshot(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        raise NotSupported(what=f"snapshots on {self.type} storage")

    def snapshot_delete(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        raise NotSupported(what=f"snapshots on {self.type} storage")

    def snapshot_rollback(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        raise NotSupported(what=f"snapshots on {self.type} storage")

    def snapshots(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        raise NotSupported(what=f"snapshots on {self.type} storage")

    def create_base(self, cfg: dict[str, Any], *, volname: str) -> str:
        """Turn a guest's volume into a read-only base (a template's disk) that
        linked clones hang on; returns the base's volume name."""
        raise NotSupported(what=f"base volumes on {self.type} storage")

    def clone_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        """A linked clone for `vmid` from `volname` (at `snap`, or a base volume)."""
        raise NotSupported(what=f"linked clones on {self.type} storage")

    def copy_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        """A full copy for `vmid`."""
        raise NotSupported(what=f"copies on {self.type} storage")

    # -- streams -------------------------------------------------------------
    def export_formats(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        return []

    def export(
        self,
        cfg: dict[str, Any],
        *,
        volname: str,
        fmt: str,
        out: IO[bytes],
        snap: str | None = None,
    ) -> None:
        raise NotSupported(what=f"export from {self.type} storage")

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
        raise NotSupported(what=f"import into {self.type} storage")


def free_index(taken: set[str], vmid: int, *, prefix: str = "vm") -> Iterator[int]:
    """Indexes n for which `{prefix}-{vmid}-disk-{n}` is not in `taken` (bare names)."""
    for n in range(10000):
        if f"{prefix}-{vmid}-disk-{n}" not in taken:
            yield n


def check_size(size: int, *, param: str = "size") -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ParamError.one(param, f"invalid size '{size}'")
    return size


def check_snap(snap: str, *, param: str = "snapname") -> str:
    """Snapshot names go into paths and `@`-arguments: Proxmox's pve-configid rule."""
    import re

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]{0,39}", snap or ""):
        raise ParamError.one(param, f"invalid snapshot name '{snap}'")
    return snap


__all__ = [
    "CONTENT_TYPES",
    "COMMON_OPTIONS",
    "FEATURES",
    "PATH",
    "POOL",
    "StorageFull",
    "StoragePlugin",
    "out_of_space",
    "check_size",
    "check_snap",
    "content_set",
    "free_index",
]
