"""`rbd`: VM disks as Ceph RBD images, through librados/librbd (python3-rados, python3-rbd).

Names are Proxmox's: `vm-VMID-disk-N` images, `base-VMID-disk-N` templates
(read-only, snapshot `__base__` protected) and `base-X-disk-N/vm-VMID-disk-M`
for linked clones of a base. Every node sees the same pool, so the storage is
shared by nature.

QEMU opens the images itself through librbd (`qemu_disk` gives it pool, image,
conf, user, monitors and keyring). There is no kernel RBD client on the hosts
this targets (no `rbd` module, no device-mapper), so `krbd` is refused and
container roots on RBD (which need a mapped block device) are NotSupported.

The bindings exist only for Debian's python3; they are imported on first use
so the rest of corral loads without them. One cluster connection per distinct
config is kept and shared by all threads (librados is thread-safe); every
operation is bounded by librados' op timeouts set at connect time.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from typing import IO, Any, ClassVar

from corral.cluster.errors import Conflict, NotFound, NotSupported, ParamError, Unavailable
from corral.cluster.schema import Param
from corral.cluster.undo import Reverter
from corral.storage.plugin import POOL, StorageFull, StoragePlugin, check_size, check_snap
from corral.storage.volid import VolName, check_content, check_disk_name, disk_name

CONNECT_TIMEOUT = 10  # seconds, also the monitor op timeout
OSD_OP_TIMEOUT = 60
CHUNK = 4 << 20
BASE_SNAP = "__base__"
_RAW = frozenset({"raw"})


def _libs() -> tuple[Any, Any]:
    try:
        import rados  # type: ignore[import-not-found]
        import rbd  # type: ignore[import-not-found]
    except ImportError as exc:
        raise Unavailable(
            "the Ceph bindings python3-rados/python3-rbd are not installed "
            "(or this Python is not Debian's python3)"
        ) from exc
    return rados, rbd


def mon_hosts(monhost: str) -> list[dict[str, str]]:
    """'10.0.0.1 10.0.0.2:6789' or '[v2:IP:P,v1:IP:P]' -> [{"host", "port"}] (v1 preferred)."""
    out: list[dict[str, str]] = []
    for group in re.split(r"[\s;]+", monhost.strip()):
        addrs = [a for a in group.strip("[]").split(",") if a]
        v1 = [a for a in addrs if a.startswith("v1:")]
        for addr in v1[:1] or [a for a in addrs if not a.startswith("v2:")] or addrs[:1]:
            addr = re.sub(r"^v[12]:", "", addr).split("/")[0]
            host, _, port = addr.rpartition(":") if addr.count(":") == 1 else (addr, "", "")
            out.append({"host": host.strip("[]"), "port": port or "6789"})
    return out


class _Connections:
    """librados handles by config, connected once, shared by threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, ...], Any] = {}

    @staticmethod
    def key(cfg: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(cfg.get(k) or "") for k in ("conf", "monhost", "username", "keyring"))

    def get(self, cfg: dict[str, Any]) -> Any:
        rados, _ = _libs()
        key = self.key(cfg)
        with self._lock:
            conn = self._by_key.get(key)
            if conn is not None and conn.state == "connected":
                return conn
            opts = {
                "client_mount_timeout": str(CONNECT_TIMEOUT),
                "rados_mon_op_timeout": str(CONNECT_TIMEOUT),
                "rados_osd_op_timeout": str(OSD_OP_TIMEOUT),
            }
            if cfg.get("monhost"):
                opts["mon_host"] = str(cfg["monhost"])
            if cfg.get("keyring"):
                opts["keyring"] = str(cfg["keyring"])
            try:
                # conffile=None: monhost/keyring alone (an empty name makes librados
                # search /etc/ceph and fail when it is not there).
                conn = rados.Rados(
                    conffile=str(cfg["conf"]) if cfg.get("conf") else None,
                    rados_id=str(cfg.get("username") or "admin"),
                    conf=opts,
                )
            except rados.Error as exc:
                raise ParamError.one("conf", f"cannot read the Ceph configuration: {exc}") from exc
            try:
                conn.connect(timeout=CONNECT_TIMEOUT)
            except rados.Error as exc:
                conn.shutdown()
                raise Unavailable(f"cannot reach the Ceph cluster: {exc}") from exc
            self._by_key[key] = conn
            return conn

    def drop(self, cfg: dict[str, Any]) -> None:
        with self._lock:
            conn = self._by_key.pop(self.key(cfg), None)
        if conn is not None:
            conn.shutdown()


CONNECTIONS = _Connections()


class RbdPlugin(StoragePlugin):
    type = "rbd"
    content = frozenset({"images", "rootdir"})
    default_content = frozenset({"images"})
    formats: ClassVar[tuple[str, ...]] = ("raw",)
    shared_by_nature = True
    options = {
        "pool": Param(
            "string", "Pool.", optional=True, default="rbd", pattern=POOL.pattern, max_length=200
        ),
        "monhost": Param("string", "Monitors (IP[:PORT] list).", optional=True, max_length=1024),
        "username": Param(
            "string",
            "RBD id (client name without 'client.').",
            optional=True,
            default="admin",
            pattern=r"[A-Za-z0-9_.\-]+",
        ),
        "keyring": Param(
            "string", "Path of the client's keyring.", optional=True, pattern=r"/[A-Za-z0-9_./\-]*"
        ),
        "conf": Param("string", "Path of ceph.conf.", optional=True, pattern=r"/[A-Za-z0-9_./\-]*"),
        "namespace": Param(
            "string", "RBD namespace.", optional=True, pattern=r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
        ),
        "krbd": Param(
            "boolean",
            "Map images with the kernel client (not supported).",
            optional=True,
            default=0,
        ),
    }
    features = {
        "snapshot": {"current": _RAW, "snap": _RAW},
        "clone": {"base": _RAW, "snap": _RAW},
        "template": {"current": _RAW},
        "copy": {"base": _RAW, "current": _RAW, "snap": _RAW},
        "resize": {"current": _RAW},
        "sparseinit": {"base": _RAW, "current": _RAW},
        "rename": {"current": _RAW},
    }

    # -- config and connection ----------------------------------------------------
    @classmethod
    def check_config(cls, cfg: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
        out = super().check_config(cfg, partial=partial)
        if int(out.get("krbd") or 0):
            raise ParamError.one(
                "krbd", "the kernel RBD client is not available: QEMU reaches RBD through librbd"
            )
        if not partial and not (out.get("monhost") or out.get("conf")):
            raise ParamError.one("monhost", "monhost or conf is required")
        return out

    @contextlib.contextmanager
    def ioctx(self, cfg: dict[str, Any]) -> Iterator[Any]:
        rados, _ = _libs()
        conn = CONNECTIONS.get(cfg)
        try:
            ctx = conn.open_ioctx(str(cfg.get("pool") or "rbd"))
        except rados.ObjectNotFound as exc:
            raise NotFound(what=f"RBD pool '{cfg.get('pool') or 'rbd'}'") from exc
        try:
            if cfg.get("namespace"):
                ctx.set_namespace(str(cfg["namespace"]))
            yield ctx
        finally:
            ctx.close()

    @contextlib.contextmanager
    def image(
        self, cfg: dict[str, Any], name: str, *, snap: str | None = None, read_only: bool = False
    ) -> Iterator[Any]:
        """An open librbd Image of `name` (a bare image name); NotFound if missing."""
        _, rbd = _libs()
        with self.ioctx(cfg) as ctx:
            try:
                img = rbd.Image(ctx, name, snapshot=snap, read_only=read_only or bool(snap))
            except rbd.ImageNotFound as exc:
                what = f"snapshot '{snap}' of '{name}'" if snap else f"volume '{name}'"
                raise NotFound(what=what) from exc
            try:
                yield img
            finally:
                img.close()

    def activate(self, cfg: dict[str, Any]) -> None:
        if int(cfg.get("krbd") or 0):
            raise ParamError.one("krbd", "the kernel RBD client is not available here")
        with self.ioctx(cfg):
            pass  # reachable, pool exists

    def deactivate(self, cfg: dict[str, Any]) -> None:
        CONNECTIONS.drop(cfg)

    def status(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Pool figures from `ceph df`: used by this pool, what it may still take."""
        conn = CONNECTIONS.get(cfg)
        ret, out, errs = conn.mon_command(
            json.dumps({"prefix": "df", "format": "json"}), b"", timeout=CONNECT_TIMEOUT
        )
        if ret != 0:
            raise Unavailable(f"ceph df failed: {errs}")
        pool = str(cfg.get("pool") or "rbd")
        for entry in json.loads(out).get("pools", []):
            if entry["name"] == pool:
                used, avail = int(entry["stats"]["bytes_used"]), int(entry["stats"]["max_avail"])
                return {"total": used + avail, "used": used, "avail": avail, "active": True}
        raise NotFound(what=f"RBD pool '{pool}'")

    # -- names ----------------------------------------------------------------------
    def _names(self, ctx: Any) -> list[str]:
        _, rbd = _libs()
        return sorted(rbd.RBD().list(ctx))

    def _vol(self, cfg: dict[str, Any], volname: str) -> VolName:
        vol = self.parse_volname(cfg, volname=volname)
        return vol

    def _volname(self, cfg: dict[str, Any], name: str, img: Any) -> str:
        """Proxmox's name: a linked clone of a base carries the base in front."""
        _, rbd = _libs()
        try:
            _, pname, psnap = img.parent_info()
        except rbd.ImageNotFound:
            return name
        return f"{pname}/{name}" if psnap == BASE_SNAP and pname.startswith("base-") else name

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
        if fmt not in (None, "raw"):
            raise ParamError.one("format", f"unsupported format '{fmt}' on rbd storage")
        if name is not None:
            m = check_disk_name(name, vmid=vmid)
            if m.group(4) or m.group(1) != "vm":
                raise ParamError.one("name", f"illegal name '{name}' - should be 'vm-{vmid}-*'")
        return self._create(cfg, vmid=vmid, size=size, name=name)

    def _create(
        self, cfg: dict[str, Any], *, vmid: int, size: int, name: str | None, fill: Any = None
    ) -> str:
        """Create `name` or the next free vm-VMID-disk-N; `fill(ctx, name)` may create it."""
        _, rbd = _libs()
        with self.ioctx(cfg) as ctx:
            for _ in range(100):
                target = name or self._free_name(ctx, vmid)
                try:
                    if fill is None:
                        rbd.RBD().create(ctx, target, size, old_format=False)
                    else:
                        fill(ctx, target)
                except rbd.ImageExists:
                    if name is not None:
                        raise Conflict(f"volume '{name}' already exists") from None
                    continue  # a concurrent alloc took this index
                except rbd.NoSpace as exc:
                    raise StorageFull(detail=f"{size} bytes for {target}") from exc
                return target
        raise Conflict(f"no free disk name for VM {vmid}")

    def _free_name(self, ctx: Any, vmid: int) -> str:
        taken = set(self._names(ctx))
        taken |= {n.replace("base-", "vm-", 1) for n in taken}
        for n in range(10000):
            if disk_name(vmid, n) not in taken:
                return disk_name(vmid, n)
        raise Conflict(f"no free disk name for VM {vmid}")

    def free(self, cfg: dict[str, Any], *, volname: str) -> None:
        _, rbd = _libs()
        vol = self._vol(cfg, volname)
        with self.image(cfg, vol.name) as img:
            for snap in [s["name"] for s in img.list_snaps()]:
                if img.is_protected_snap(snap):
                    if self._children(img, snap):
                        raise Conflict(f"'{volname}' still has linked clones")
                    img.unprotect_snap(snap)
                img.remove_snap(snap)
        with self.ioctx(cfg) as ctx:
            try:
                rbd.RBD().remove(ctx, vol.name)
            except rbd.ImageNotFound as exc:
                raise NotFound(what=f"volume '{volname}'") from exc
            except rbd.ImageBusy as exc:
                raise Conflict(f"volume '{volname}' is in use (watchers)") from exc

    def size(self, cfg: dict[str, Any], *, volname: str) -> int:
        with self.image(cfg, self._vol(cfg, volname).name, read_only=True) as img:
            return int(img.size())

    def resize(self, cfg: dict[str, Any], *, volname: str, size: int) -> None:
        check_size(size)
        self.require_feature(cfg, feature="resize", volname=volname)
        with self.image(cfg, self._vol(cfg, volname).name) as img:
            if size < img.size():
                raise ParamError.one("size", "shrinking disks is not supported")
            img.resize(size)

    def list_volumes(
        self, cfg: dict[str, Any], *, content: str | None = None, vmid: int | None = None
    ) -> list[dict[str, Any]]:
        _, rbd = _libs()
        kinds = {content} if content else set(self.enabled_content(cfg))
        if "images" not in kinds and "rootdir" not in kinds:
            return []
        out = []
        with self.ioctx(cfg) as ctx:
            for name in self._names(ctx):
                try:
                    vol = self.parse_volname(cfg, volname=name)
                except ParamError:
                    continue  # not ours: never listed, never touched
                if vmid is not None and vol.vmid != vmid:
                    continue
                try:
                    img = rbd.Image(ctx, name, read_only=True)
                except rbd.ImageNotFound:
                    continue  # removed meanwhile
                try:
                    row = {
                        "volname": self._volname(cfg, name, img),
                        "content": "images",
                        "format": "raw",
                        "size": int(img.size()),
                        "vmid": vol.vmid,
                    }
                finally:
                    img.close()
                if "images" in kinds:
                    out.append(row)
        return sorted(out, key=lambda r: r["volname"])

    def qemu_disk(self, cfg: dict[str, Any], *, volname: str) -> dict[str, Any]:
        vol = self._vol(cfg, volname)
        with self.image(cfg, vol.name, read_only=True):
            pass  # exists
        disk = {
            "kind": "rbd",
            "pool": str(cfg.get("pool") or "rbd"),
            "image": vol.name,
            "conf": cfg.get("conf"),
            "user": str(cfg.get("username") or "admin"),
            "hosts": mon_hosts(str(cfg.get("monhost") or "")),
            "keyring": cfg.get("keyring"),
            "format": "raw",
        }
        if cfg.get("namespace"):
            disk["namespace"] = str(cfg["namespace"])
        return disk

    def mount_rootdir(self, cfg: dict[str, Any], *, volname: str) -> str:
        raise NotSupported(
            what="container roots on RBD (they need the kernel rbd module, absent on this host)"
        )

    # -- snapshots --------------------------------------------------------------------
    def snapshot(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        _, rbd = _libs()
        check_snap(snap)
        self.require_feature(cfg, feature="snapshot", volname=volname)
        with self.image(cfg, self._vol(cfg, volname).name) as img:
            try:
                img.create_snap(snap)
            except rbd.ImageExists as exc:
                raise Conflict(f"snapshot '{snap}' of '{volname}' already exists") from exc

    def _has_snap(self, img: Any, volname: str, snap: str) -> None:
        if snap not in {s["name"] for s in img.list_snaps()}:
            raise NotFound(what=f"snapshot '{snap}' of '{volname}'")

    def snapshot_delete(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        check_snap(snap)
        with self.image(cfg, self._vol(cfg, volname).name) as img:
            self._has_snap(img, volname, snap)
            if img.is_protected_snap(snap):
                if self._children(img, snap):
                    raise Conflict(f"snapshot '{snap}' of '{volname}' has linked clones")
                img.unprotect_snap(snap)
            img.remove_snap(snap)

    @staticmethod
    def _children(img: Any, snap: str) -> list[Any]:
        img.set_snap(snap)
        try:
            return list(img.list_children2())
        finally:
            img.set_snap(None)

    def snapshot_rollback(self, cfg: dict[str, Any], *, volname: str, snap: str) -> None:
        check_snap(snap)
        with self.image(cfg, self._vol(cfg, volname).name) as img:
            self._has_snap(img, volname, snap)
            img.rollback_to_snap(snap)

    def snapshots(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        with self.image(cfg, self._vol(cfg, volname).name, read_only=True) as img:
            return [s["name"] for s in img.list_snaps() if s["name"] != BASE_SNAP]

    # -- templates, clones, copies -------------------------------------------------
    def create_base(self, cfg: dict[str, Any], *, volname: str) -> str:
        """Rename to base-..., snapshot `__base__` and protect it (what clones hang on)."""
        _, rbd = _libs()
        vol = self._vol(cfg, volname)
        if vol.isbase or vol.base:
            raise ParamError.one("volume", f"'{volname}' is already a base or a linked clone")
        new = vol.name.replace("vm-", "base-", 1)
        with self.ioctx(cfg) as ctx, Reverter() as undo:
            try:
                rbd.RBD().rename(ctx, vol.name, new)
            except rbd.ImageNotFound as exc:
                raise NotFound(what=f"volume '{volname}'") from exc
            except rbd.ImageExists as exc:
                raise Conflict(f"volume '{new}' already exists") from exc
            undo.add(lambda: rbd.RBD().rename(ctx, new, vol.name))
            with self.image(cfg, new) as img:
                img.create_snap(BASE_SNAP)
                undo.add(lambda: self._drop_snap(cfg, new, BASE_SNAP))
                img.protect_snap(BASE_SNAP)
            undo.success()
        return new

    def _drop_snap(self, cfg: dict[str, Any], name: str, snap: str) -> None:
        with self.image(cfg, name) as img:
            if img.is_protected_snap(snap):
                img.unprotect_snap(snap)
            img.remove_snap(snap)

    def clone_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        """A copy-on-write child of a base (its `__base__`) or of a snapshot (protected)."""
        _, rbd = _libs()
        vol = self.require_feature(cfg, feature="clone", volname=volname, snap=snap)
        parent_snap = snap or BASE_SNAP
        if snap is not None:
            check_snap(snap)
        with self.image(cfg, vol.name) as img:
            self._has_snap(img, volname, parent_snap) if snap else None
            if not img.is_protected_snap(parent_snap):
                img.protect_snap(parent_snap)  # a clone's parent must never go away

        def fill(ctx: Any, target: str) -> None:
            rbd.RBD().clone(ctx, vol.name, parent_snap, ctx, target)

        new = self._create(cfg, vmid=vmid, size=0, name=None, fill=fill)
        return f"{vol.name}/{new}" if snap is None else new

    def copy_image(
        self, cfg: dict[str, Any], *, volname: str, vmid: int, snap: str | None = None
    ) -> str:
        """A full, independent copy (head data only, no snapshots, no parent)."""
        vol = self.require_feature(cfg, feature="copy", volname=volname, snap=snap)
        with self.image(cfg, vol.name, snap=snap) as src:

            def fill(ctx: Any, target: str) -> None:
                src.copy(ctx, target)

            return self._create(cfg, vmid=vmid, size=0, name=None, fill=fill)

    # -- streams ----------------------------------------------------------------
    def export_formats(self, cfg: dict[str, Any], *, volname: str) -> list[str]:
        self._vol(cfg, volname)
        return ["raw"]

    def export(
        self,
        cfg: dict[str, Any],
        *,
        volname: str,
        fmt: str,
        out: IO[bytes],
        snap: str | None = None,
    ) -> None:
        if fmt != "raw":
            raise ParamError.one("format", f"cannot export '{volname}' as {fmt}")
        if snap is not None:
            check_snap(snap)
        with self.image(cfg, self._vol(cfg, volname).name, snap=snap, read_only=True) as img:
            size = int(img.size())
            for offset in range(0, size, CHUNK):
                out.write(img.read(offset, min(CHUNK, size - offset)))

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
        """A raw stream into a new image; removed again if the stream or a write fails."""
        if fmt != "raw":
            raise ParamError.one("format", f"cannot import format {fmt} into rbd storage")
        _, rbd = _libs()
        new = self.alloc(cfg, vmid=vmid, size=size or 0, content=content)
        with Reverter() as undo:
            undo.add(lambda: self.free(cfg, volname=new))
            with self.image(cfg, new) as img:
                offset = 0
                try:
                    while chunk := stream.read(CHUNK):
                        if offset + len(chunk) > img.size():
                            img.resize(offset + len(chunk))
                        img.write(chunk, offset)
                        offset += len(chunk)
                except rbd.NoSpace as exc:  # the pool's quota or a full OSD
                    raise StorageFull(detail=f"import of {new}") from exc
            undo.success()
        return new
