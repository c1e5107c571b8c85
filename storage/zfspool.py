"""`zfspool`: datasets and zvols under one ZFS dataset (Proxmox's zfspool plugin).

    POOL/subvol-VMID-disk-N      container root: a file system, size = refquota
    POOL/vm-VMID-disk-N          VM disk: a zvol (/dev/zvol/POOL/vm-...), size = volsize
    POOL/base-*, POOL/basevol-*  templates, snapshot `__base__`, read-only
    POOL/NAME@SNAP               snapshots; rollback only to the latest one (as Proxmox)

Linked clones are `zfs clone`s of a base's `__base__` (named `BASE/NAME`) or of
a snapshot; full copies are `zfs send | zfs recv` of a snapshot. Everything goes
through the `zfs` command with a timeout; the listing is parsed from
`zfs list -H -p` (or, with zfs-fuse whose `zfs list` has no -p, the same
properties from `zfs get -H -p`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from typing import IO, Any, ClassVar

from corral.cluster.errors import CommandFailed, Conflict, NotFound, NotSupported, ParamError
from corral.cluster.schema import Param
from corral.cluster.undo import Reverter
from corral.storage.cmd import run
from corral.storage.dir import CHUNK, extract_tar
from corral.storage.plugin import (
    POOL,
    StorageFull,
    StoragePlugin,
    check_size,
    check_snap,
)
from corral.storage.volid import (
    VolName,
    check_content,
    check_disk_name,
    disk_name,
    parse_block_volname,
)

ZFS = "zfs"
_TIMEOUT = 60.0
_SEND_TIMEOUT = 3600.0
BUSY_RETRY = 10.0
BASE_SNAP = "__base__"
_ALL = frozenset({"raw", "subvol"})
LIST_PROPS = ("name", "type", "volsize", "refquota", "origin", "used")


def parse_list(text: str, props: tuple[str, ...] = LIST_PROPS) -> list[dict[str, str]]:
    """Rows of `zfs list -H -p -o PROPS` (tab separated, '-' for unset)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(props):
            raise CommandFailed(cmd="zfs list", stderr=f"unexpected line {line!r}")
        rows.append(dict(zip(props, fields, strict=True)))
    return rows


def parse_get(text: str, props: tuple[str, ...] = LIST_PROPS) -> list[dict[str, str]]:
    """`zfs get -H -p -o name,property,value` (one line per property) into list rows."""
    rows: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, prop, value = line.split("\t")[:3]
        rows.setdefault(name, {"name": name})[prop] = value
    return [{p: row.get(p, "-") for p in props} for row in rows.values()]


def volumes_from_rows(
    rows: list[dict[str, str]], *, kinds: set[str], vmid: int | None = None
) -> list[dict[str, Any]]:
    """Guest volumes among listing rows; a clone of a base is named BASE/NAME (Proxmox)."""
    out = []
    for row in rows:
        name = row["name"].rsplit("/", 1)[-1]
        try:
            vol = parse_block_volname(name)
        except ParamError:
            continue  # the pool itself, or not ours
        if vol.vtype not in kinds or (vmid is not None and vol.vmid != vmid):
            continue
        origin = row["origin"]
        base = origin.rsplit("/", 1)[-1].split("@")[0] if origin not in ("-", "") else ""
        if base.startswith("base") and origin.endswith("@" + BASE_SNAP):
            name = f"{base}/{name}"
        size = _int(row["refquota"] if vol.fmt == "subvol" else row["volsize"])
        out.append(
            {
                "volname": name,
                "content": vol.vtype,
                "format": vol.fmt,
                "size": size,
                "used": _int(row["used"]),
                "vmid": vol.vmid,
            }
        )
    return sorted(out, key=lambda r: r["volname"])


def _int(value: str) -> int:
    return int(value) if value not in ("-", "", "none") else 0


def _classify(exc: CommandFailed, what: str) -> Exception:
    text = str(exc)
    if "does not exist" in text:
        return NotFound(what=what)
    if "already exists" in text:
        return Conflict(f"{what} already exists")
    if "dependent clones" in text:
        return Conflict(f"{what} has linked clones")
    if "out of space" in text or "No space left" in text or "quota exceeded" in text:
        return StorageFull(detail=what)
    return exc


class ZfsPoolPlugin(StoragePlugin):
    type = "zfspool"
    content = frozenset({"images", "rootdir"})
    default_content = frozenset({"images", "rootdir"})
    formats: ClassVar[tuple[str, ...]] = ("raw", "subvol")
    options = {
        "pool": POOL,
        "sparse": Param("boolean", "Use thin-provisioned zvols.", optional=True, default=0),
        "blocksize": Param("string", "zvol block size.", optional=True, pattern=r"\d+[KkMm]?"),
        "mountpoint": Param(
            "string",
            "Where the pool's datasets are mounted.",
            optional=True,
            pattern=r"/[A-Za-z0-9_./\-]*",
        ),
    }
    features = {
        "snapshot": {"current": _ALL, "snap": _ALL},
        "clone": {"base": _ALL, "snap": _ALL},
        "template": {"current": _ALL},
        "copy": {"base": _ALL, "current": _ALL, "snap": _ALL},
        "resize": {"current": _ALL},
        "sparseinit": {"base": _ALL, "current": _ALL},
        "rename": {"current": _ALL},
    }
    _has_list_p: ClassVar[bool | None] = None  # zfs-fuse's `zfs list` lacks -p

    # -- commands ---------------------------------------------------------------------
    def zfs(self, *args: str, what: str = "dataset", timeout: float = _TIMEOUT) -> str:
        """Run zfs; a dataset 'busy' just after a mount or a write is retried for a while.

        zfs-fuse (and ZFS on Linux now and then, which is why Proxmox retries
        too) reports a freshly used file system busy for a fraction of a second.
        """
        deadline = time.monotonic() + BUSY_RETRY
        while True:
            try:
                return run([ZFS, *args], timeout=timeout).stdout.decode()
            except CommandFailed as exc:
                if "dataset is busy" in str(exc) and time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                raise _classify(exc, what) from exc

    def _ds(self, cfg: dict[str, Any], name: str) -> str:
        return f"{cfg['pool']}/{name}"

    def _rows(self, cfg: dict[str, Any]) -> list[dict[str, str]]:
        pool = str(cfg["pool"])
        cls = type(self)
        if cls._has_list_p is not False:
            try:
                out = run(
                    [
                        ZFS,
                        "list",
                        "-H",
                        "-p",
                        "-o",
                        ",".join(LIST_PROPS),
                        "-t",
                        "filesystem,volume",
                        "-d",
                        "1",
                        pool,
                    ],
                    timeout=_TIMEOUT,
                )
                cls._has_list_p = True
                return parse_list(out.stdout.decode())
            except CommandFailed as exc:
                if "invalid option 'p'" not in str(exc):
                    raise _classify(exc, f"ZFS pool '{pool}'") from exc
                cls._has_list_p = False
        text = self.zfs(
            "get",
            "-H",
            "-p",
            "-o",
            "name,property,value",
            "-d",
            "1",
            ",".join(p for p in LIST_PROPS if p != "name"),
            pool,
            what=f"ZFS pool '{pool}'",
        )
        return [r for r in parse_get(text) if r["type"] in ("filesystem", "volume")]

    def _row(self, cfg: dict[str, Any], vol: VolName, volname: str) -> dict[str, str]:
        for row in self._rows(cfg):
            if row["name"] == self._ds(cfg, vol.name):
                return row
        raise NotFound(what=f"volume '{volname}'")

    # -- storage ----------------------------------------------------------------------
    def activate(self, cfg: dict[str, Any]) -> None:
        self.zfs("list", "-H", "-o", "name", str(cfg["pool"]), what=f"ZFS pool '{cfg['pool']}'")

    def status(self, cfg: dict[str, Any]) -> dict[str, Any]:
        text = self.zfs("get", "-H", "-p", "-o", "value", "available,used", str(cfg["pool"]))
        avail, used = (_int(v) for v in text.split())
        return {"total": avail + used, "used": used, "avail": avail, "active": True}

    # -- volumes ----------------------------------------------------------------------
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
        fmt = fmt or ("subvol" if content == "rootdir" else "raw")
        if fmt not in self.formats or (fmt == "subvol") != (content == "rootdir"):
            raise ParamError.one("format", f"format {fmt} cannot hold content {content}")
        subvol = fmt == "subvol"
        if name is not None:
            m = check_disk_name(name, vmid=vmid)
            if m.group(4) or m.group(1) != ("subvol" if subvol else "vm"):
                raise ParamError.one("name", f"illegal name '{name}' for format {fmt}")
        return self._create(
            cfg,
            vmid=vmid,
            subvol=subvol,
            name=name,
            make=lambda ds: self._make(cfg, ds, subvol=subvol, size=size),
        )

    def _make(self, cfg: dict[str, Any], ds: str, *, subvol: bool, size: int) -> None:
        if subvol:
            argv = ["create"] + (["-o", f"refquota={size}"] if size else []) + [ds]
        else:
            block = 8192
            argv = ["create"] + (["-s"] if int(cfg.get("sparse") or 0) else [])
            if cfg.get("blocksize"):
                argv += ["-b", str(cfg["blocksize"])]
            # volsize must be a multiple of the block size: round up to 8 KiB as Proxmox does.
            argv += ["-V", str(-(-max(size, block) // block) * block), ds]
        try:
            self.zfs(*argv, what=f"volume '{ds.rsplit('/', 1)[-1]}'")
        except CommandFailed as exc:
            if not subvol and ("not implemented" in str(exc) or "Aborted" in str(exc)):
                raise NotSupported(what="zvols with this ZFS (zfs-fuse has no zvols)") from exc
            raise

    def _create(
        self, cfg: dict[str, Any], *, vmid: int, subvol: bool, name: str | None, make: Any
    ) -> str:
        """Create `name` or the next free index through `make(dataset)`; one winner per name."""
        for _ in range(100):
            target = name or self._free_name(cfg, vmid, subvol)
            try:
                make(self._ds(cfg, target))
            except Conflict:
                if name is not None:
                    raise
                continue  # a concurrent alloc took this index
            return target
        raise Conflict(f"no free disk name for VM {vmid}")

    def _free_name(self, cfg: dict[str, Any], vmid: int, subvol: bool) -> str:
        taken = {r["name"].rsplit("/", 1)[-1] for r in self._rows(cfg)}
        taken |= {n.replace("base-", "vm-", 1).replace("basevol-", "subvol-", 1) for n in taken}
        for n in range(10000):
            if disk_name(vmid, n, subvol=subvol) not in taken:
                return disk_name(vmid, n, subvol=subvol)
        raise Conflict(f"no free disk name for VM {vmid}")

    def free(self, cfg: dict[str, Any], *, volname: str) -> None:
        vol = self.parse_volname(cfg, volname=volname)
        self._row(cfg, vol, volname)
        # -r: with its snapshots; a dataset others were cloned from is refused (Conflict).
        self.zfs("destroy", "-r", self._ds(cfg, vol.name), what=f"volume '{volname}'")

    def size(self, cfg: dict[str, Any], *, volname: str) -> int:
        vol = self.parse_volname(cfg, volname=volname)
        row = self._row(cfg, vol, volname)
        return _int(row["refquota"] if vol.fmt == "subvol" else row["volsize"])

    def resize(self, cfg: dict[str, Any], *, volname: str, size: int) -> None:
        check_size(size)
        vol = self.require_feature(cfg, feature="resize", volname=volname)
        if size < self.size(cfg, volname=volname):
            raise ParamError.one("size", "shrinking disks is not supported")
        prop = "refquota" if vol.fmt == "subvol" else "volsize"
        self.zfs("set", f"{prop}={size}", self._ds(cfg, vol.name), what=f"volume '{volname}'")

    def list_volumes(
        self, cfg: dict[str, Any], *, content: str | None = None, vmid: int | None = None
    ) -> list[dict[str, Any]]:
        kinds = {content} if content else set(self.enabled_content(cfg))
        return volumes_from_rows(self._rows(cfg), kinds=kinds, vmid=vmid)

    def _mountpoint(self, cfg: dict[str, Any], vol: VolName) -> str:
        ds = self._ds(cfg, vol.name)
        if cfg.get("mountpoint"):
            path = os.path.join(str(cfg["mountpoint"]), vol.name)
        else:
            path = self.zfs("get", "-H", "-o", "value", "mountpoint", ds).strip()
        if self.zfs("get", "-H", "-o", "value", "mounted", ds).strip() != "yes":
            self.zfs("mount", ds)
        return path

    def file_path(self, cfg: dict[str, Any], *, volname: str) -> str:
        vol = self.parse_volname(cfg, volname=volname)
        if vol.fmt == "subvol":
            return self._mountpoint(cfg, vol)
        return f"/dev/zvol/{self._ds(cfg, vol.name)}"

    def qemu_disk(self, cfg: dict[str, Any], *, volname: str) -> dict[str, Any]:
        vol = self.parse_volname(cfg, volname=volname)
        if vol.fmt == "subvol":
            raise ParamError.one("volume", f"'{volname}' is not a disk image")
        self._row(cfg, vol, volname)
        return {"kind": "block", "path": self.file_path(cfg, volname=volname), "format": "raw"}

    def mount_rootdir(self, cfg: dict[str, Any], *, volname: str) -> str:
        vol = self.parse_volname(cfg, volname=volname)
        if vol.fmt != "subvol":
            raise NotSupported(what="container roots in zvols on zfspool storage")
        self._row(cfg, vol, volname)
        return self._mountpoint(cfg, vol)

    # -- snapshots --------------------------------------------------------------------
    def snapshot(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        vol = self.parse_volname(cfg, volname=volname)
        self._row(cfg, vol, volname)
        self.zfs(
            "snapshot",
            f"{self._ds(cfg, vol.name)}@{check_snap(snap)}",
            what=f"snapshot '{snap}' of '{volname}'",
        )

    def _snaps(self, cfg: dict[str, Any], vol: VolName, volname: str) -> list[str]:
        self._row(cfg, vol, volname)
        text = self.zfs(
            "list",
            "-H",
            "-o",
            "name",
            "-t",
            "snapshot",
            "-s",
            "creation",
            "-d",
            "1",
            self._ds(cfg, vol.name),
        )
        return [line.split("@", 1)[1] for line in text.splitlines() if "@" in line]

    def _existing_snap(
        self, cfg: dict[str, Any], volname: str, snap: str
    ) -> tuple[VolName, list[str]]:
        check_snap(snap)
        vol = self.parse_volname(cfg, volname=volname)
        snaps = self._snaps(cfg, vol, volname)
        if snap not in snaps:
            raise NotFound(what=f"snapshot '{snap}' of '{volname}'")
        return vol, snaps

    def snapshot_delete(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        vol, _ = self._existing_snap(cfg, volname, snap)
        self.zfs(
            "destroy", f"{self._ds(cfg, vol.name)}@{snap}", what=f"snapshot '{snap}' of '{volname}'"
        )

    def snapshot_rollback(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        vol, snaps = self._existing_snap(cfg, volname, snap)
        later = [s for s in snaps[snaps.index(snap) + 1 :] if s != BASE_SNAP]
        if later:  # zfs would have to destroy them (-r): refuse, as Proxmox does
            raise Conflict(f"can't rollback, more recent snapshots exist: {', '.join(later)}")
        self.zfs(
            "rollback",
            f"{self._ds(cfg, vol.name)}@{snap}",
            what=f"snapshot '{snap}' of '{volname}'",
        )

    def snapshots(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        vol = self.parse_volname(cfg, volname=volname)
        return [s for s in self._snaps(cfg, vol, volname) if s != BASE_SNAP]

    # -- templates, clones, copies -------------------------------------------------
    def create_base(self, cfg: dict[str, Any], *, volname: str) -> str:
        vol = self.parse_volname(cfg, volname=volname)
        if vol.isbase or vol.base:
            raise ParamError.one("volume", f"'{volname}' is already a base or a linked clone")
        self._row(cfg, vol, volname)
        new = vol.name.replace("vm-", "base-", 1).replace("subvol-", "basevol-", 1)
        src, dst = self._ds(cfg, vol.name), self._ds(cfg, new)
        with Reverter() as undo:
            self.zfs("rename", src, dst, what=f"volume '{new}'")
            undo.add(lambda: self.zfs("rename", dst, src))
            self.zfs("snapshot", f"{dst}@{BASE_SNAP}")
            undo.add(lambda: self.zfs("destroy", f"{dst}@{BASE_SNAP}"))
            self.zfs("set", "readonly=on", dst)
            undo.success()
        return new

    def clone_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        vol = self.require_feature(cfg, feature="clone", volname=volname, snap=snap)
        if snap is not None:
            self._existing_snap(cfg, volname, snap)
        elif not vol.isbase:
            raise ParamError.one("volume", f"'{volname}' is not a base volume")
        origin = f"{self._ds(cfg, vol.name)}@{snap or BASE_SNAP}"
        subvol = vol.fmt == "subvol"

        def make(ds: str) -> None:
            self.zfs("clone", origin, ds, what=f"volume '{ds.rsplit('/', 1)[-1]}'")
            if subvol:
                self.zfs("set", "readonly=off", ds)  # a clone of a base must be writable

        new = self._create(cfg, vmid=vmid, subvol=subvol, name=None, make=make)
        return f"{vol.name}/{new}" if snap is None else new

    def copy_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        """`zfs send SNAP | zfs recv NEW`, through a temporary snapshot when none is given.

        A container root's current state is copied file by file instead: zfs-fuse
        can leave the source of a send 'busy' for good, and `cp -a` of a mounted
        tree is what the dir and btrfs backends do too.
        """
        vol = self.require_feature(cfg, feature="copy", volname=volname, snap=snap)
        size = self.size(cfg, volname=volname)
        if vol.fmt == "subvol" and snap is None and not vol.isbase:
            return self._copy_tree(cfg, vol, volname, vmid=vmid, size=size)
        with self._source_snap(cfg, volname, vol, snap) as source:

            def make(ds: str) -> None:
                if self._exists(ds):
                    raise Conflict(f"volume '{ds}' already exists")
                with Reverter() as undo:
                    undo.add(lambda: self._destroy_quietly(ds))
                    self._send_recv(source, ds)
                    self.zfs("destroy", f"{ds}@{source.split('@', 1)[1]}")
                    self.zfs("set", "readonly=off", ds)
                    if vol.fmt == "subvol" and size:
                        self.zfs("set", f"refquota={size}", ds)
                    undo.success()

            new = self._create(cfg, vmid=vmid, subvol=vol.fmt == "subvol", name=None, make=make)
        return new

    def _copy_tree(
        self, cfg: dict[str, Any], vol: VolName, volname: str, *, vmid: int, size: int
    ) -> str:
        src = self.mount_rootdir(cfg, volname=volname)
        new = self.alloc(cfg, vmid=vmid, size=size, content="rootdir")
        with Reverter() as undo:
            undo.add(lambda: self.free(cfg, volname=new))
            dst = self.mount_rootdir(cfg, volname=new)
            try:
                run(["cp", "-a", "--sparse=always", "--", f"{src}/.", dst], timeout=_SEND_TIMEOUT)
            except CommandFailed as exc:
                raise _classify(exc, f"copy of {volname}") from exc
            undo.success()
        return new

    @contextlib.contextmanager
    def _source_snap(
        self, cfg: dict[str, Any], volname: str, vol: VolName, snap: str | None
    ) -> Iterator[str]:
        if snap is not None:
            self._existing_snap(cfg, volname, snap)
            yield f"{self._ds(cfg, vol.name)}@{snap}"
            return
        if vol.isbase:
            yield f"{self._ds(cfg, vol.name)}@{BASE_SNAP}"
            return
        tmp = f"{self._ds(cfg, vol.name)}@copy-{os.getpid()}-{id(vol)}"
        self.zfs("snapshot", tmp)
        try:
            yield tmp
        finally:
            self._destroy_quietly(tmp)

    def _exists(self, ds: str) -> bool:
        return (
            run([ZFS, "list", "-H", "-o", "name", ds], timeout=_TIMEOUT, check=False).returncode
            == 0
        )

    def _destroy_quietly(self, ds: str) -> None:
        if self._exists(ds):
            self.zfs("destroy", "-r", ds)

    def _send_recv(self, snap: str, ds: str) -> None:
        """zfs send | zfs recv, both bounded by one timeout, no shell."""
        send = subprocess.Popen([ZFS, "send", snap], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            recv = run([ZFS, "recv", ds], stdin=send.stdout, timeout=_SEND_TIMEOUT, check=False)
        finally:
            if send.stdout:
                send.stdout.close()
            try:
                send.wait(_TIMEOUT)
            except subprocess.TimeoutExpired:
                send.kill()
                send.wait()
        err = (recv.stderr or b"").decode(errors="replace").strip()
        if send.returncode != 0 or recv.returncode != 0:
            sent = (send.stderr.read() if send.stderr else b"").decode(errors="replace")
            raise _classify(
                CommandFailed(
                    cmd=f"zfs send {snap} | zfs recv {ds}", stderr=f"{sent.strip()} {err}".strip()
                ),
                ds,
            )

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
        vol = self.parse_volname(cfg, volname=volname)
        if fmt not in self.export_formats(cfg, volname=volname):
            raise ParamError.one("format", f"cannot export '{volname}' as {fmt}")
        if snap is not None:  # read the snapshot through a temporary copy of it
            tmp = self.copy_image(cfg, volname=volname, vmid=vol.vmid or 0, snap=snap)
            try:
                return self.export(cfg, volname=tmp, fmt=fmt, out=out)
            finally:
                self.free(cfg, volname=tmp)
        if fmt == "raw":
            self._row(cfg, vol, volname)
            with open(self.file_path(cfg, volname=volname), "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
            return
        root = self.mount_rootdir(cfg, volname=volname)
        with tarfile.open(fileobj=out, mode="w|") as tar:
            tar.add(root, arcname=".")

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
        if fmt not in ("raw", "tar") or (fmt == "tar") != (content == "rootdir"):
            raise ParamError.one("format", f"cannot import format {fmt} as {content}")
        new = self.alloc(cfg, vmid=vmid, size=size or 0, content=content)
        with Reverter() as undo:
            undo.add(lambda: self.free(cfg, volname=new))
            if fmt == "tar":
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    extract_tar(tar, self.mount_rootdir(cfg, volname=new))
            else:
                with open(self.file_path(cfg, volname=new), "wb") as f:
                    shutil.copyfileobj(stream, f, CHUNK)
            undo.success()
        return new
