"""Storage endpoints with Proxmox's paths: the storage configuration (cluster-wide,
in etcd) and each node's view of it (status, content, upload).

Per-node calls are `local=True`: a non-shared storage only exists on its node,
so other nodes forward them there. Volume-level snapshot/clone/resize are corral
extensions under `.../content/{volume}/...` (Proxmox does those per guest).
"""

from __future__ import annotations

import hashlib
import os
from typing import IO, Any, cast

from corral.cluster import keys
from corral.cluster.errors import Conflict, NotFound, NotSupported, ParamError, Unavailable
from corral.cluster.schema import DIGEST, NODE, STORAGE_ID, VMID, Param, parse_size
from corral.cluster.undo import Reverter
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node
from corral.web.api_guests import service as guest_service

# Options that name where the data lives: changing them would orphan every volume.
FIXED = ("type", "path", "pool", "vgname", "thinpool")
CONTENT = Param(
    "string",
    "Only list content of this type.",
    optional=True,
    enum=("images", "rootdir", "vztmpl", "iso", "backup", "snippets"),
)
VOLUME = Param("string", "Volume identifier (STORAGE:VOLNAME or VOLNAME).", max_length=512)
CHECKSUMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


def _volumes(ctx: Ctx) -> Any:
    vols = ctx.services.get("volumes")
    if vols is None:
        raise Unavailable(f"storage is not available on node '{ctx.node}'")
    return vols


def _plugin(type: str) -> Any:
    from corral.storage.volumes import plugin_for_type

    return plugin_for_type(type)


def _digest(cfg: dict[str, Any]) -> str:
    from corral.cluster.guests import digest

    return digest(cfg)


def _config(ctx: Ctx, storage: str) -> tuple[dict[str, Any], int]:
    kv = ctx.store.get(keys.storage(storage))
    if kv is None:
        raise NotFound(what=f"storage '{storage}'")
    return dict(kv.value), kv.mod_revision


def _users_of(ctx: Ctx, storage: str) -> list[int]:
    """VMIDs whose config (current or pending) names a volume on `storage`."""
    return guest_service(ctx).storage_users(storage)


def _volume_users(ctx: Ctx, volid: str) -> list[int]:
    return guest_service(ctx).volume_users(volid)


# -- the storage configuration (cluster-wide) -------------------------------------------


@endpoint(
    "GET",
    "/storage",
    params={"type": Param("string", "Only list storage of a specific type", optional=True)},
    description="Storage index.",
)
def list_storage(ctx: Ctx, type: str | None = None) -> list[dict[str, Any]]:
    out = []
    for kv in ctx.store.range(keys.STORAGE):
        cfg = dict(kv.value)
        if type and cfg.get("type") != type:
            continue
        if not ctx.can(f"/storage/{cfg['storage']}", ["Datastore.Audit", "Datastore.Allocate"],
                       any_of=True):  # fmt: skip
            continue
        cfg["digest"] = _digest(kv.value)
        out.append(cfg)
    return sorted(out, key=lambda c: c["storage"])


@endpoint(
    "POST",
    "/storage",
    params={"storage": STORAGE_ID, "type": Param("string", "Storage type.")},
    perm=("/storage", ["Datastore.Allocate"]),
    additional=True,
    description="Create a new storage.",
)
def create_storage(ctx: Ctx, storage: str, type: str, **options: Any) -> dict[str, Any]:
    cls = _plugin(type)
    cfg = cls.check_config({"type": type, **options})
    record = {"storage": storage, **cfg}
    if not ctx.store.create(keys.storage(storage), record):
        raise Conflict(f"storage ID '{storage}' already defined")
    with Reverter() as undo:
        undo.add(lambda: ctx.store.delete(keys.storage(storage)))
        vols = ctx.services.get("volumes")
        if vols is not None and int(record.get("disable") or 0) == 0:
            from corral.storage.volumes import available_on

            if available_on(record, ctx.node):
                # As Proxmox: a storage that cannot be activated here is not created.
                vols.resolve(storage)
        undo.success()
    return {"storage": storage, "type": type}


@endpoint(
    "GET",
    "/storage/{storage}",
    params={"storage": STORAGE_ID},
    perm=("/storage/{storage}", ["Datastore.Allocate"]),
    description="Read storage configuration.",
)
def get_storage(ctx: Ctx, storage: str) -> dict[str, Any]:
    cfg, _ = _config(ctx, storage)
    return {**cfg, "digest": _digest(cfg)}


@endpoint(
    "PUT",
    "/storage/{storage}",
    params={
        "storage": STORAGE_ID,
        "digest": DIGEST,
        "delete": Param("string", "A list of settings you want to delete.", optional=True),
    },
    perm=("/storage/{storage}", ["Datastore.Allocate"]),
    additional=True,
    description="Update storage configuration.",
)
def update_storage(
    ctx: Ctx, storage: str, digest: str | None = None, delete: str | None = None, **options: Any
) -> dict[str, Any]:
    cfg, rev = _config(ctx, storage)
    if digest and digest != _digest(cfg):
        raise Conflict("detected modified configuration - file changed by other user? Try again.")
    errors = {k: "can't change value of fixed parameter" for k in options if k in FIXED}
    removals = [d for d in (delete or "").replace(";", ",").split(",") if d]
    errors.update({k: "can't delete fixed parameter" for k in removals if k in FIXED})
    if errors:
        raise ParamError(errors)
    cls = _plugin(str(cfg["type"]))
    changed = cls.check_config(options, partial=True)
    new = {k: v for k, v in cfg.items() if k not in removals}
    new.update(changed)
    cls.check_config({k: v for k, v in new.items() if k != "storage"})
    ok = ctx.store.txn(
        [("mod", keys.storage(storage), "==", rev)], [("put", keys.storage(storage), new)]
    )
    if not ok:
        raise Conflict("storage configuration changed concurrently - try again")
    return {"storage": storage, "type": cfg["type"]}


@endpoint(
    "DELETE",
    "/storage/{storage}",
    params={"storage": STORAGE_ID},
    perm=("/storage", ["Datastore.Allocate"]),
    description="Delete storage configuration.",
)
def delete_storage(ctx: Ctx, storage: str) -> None:
    _config(ctx, storage)
    users = _users_of(ctx, storage)
    if users:
        # Removing it would leave those guests with disks nobody can find.
        raise Conflict(f"storage '{storage}' is used by guest(s) {', '.join(map(str, users))}")
    ctx.store.delete(keys.storage(storage))


# -- a node's view ---------------------------------------------------------------------


def _status_row(storage: str, st: dict[str, Any]) -> dict[str, Any]:
    total = int(st.get("total", 0))
    row = {
        "storage": storage,
        "type": st["type"],
        "content": st["content"],
        "shared": st["shared"],
        "enabled": st["enabled"],
        "active": st["active"],
        "total": total,
        "used": int(st.get("used", 0)),
        "avail": int(st.get("avail", 0)),
        "used_fraction": (int(st.get("used", 0)) / total) if total else 0,
    }
    return row


@endpoint(
    "GET",
    "/nodes/{node}/storage",
    params={
        "node": NODE,
        "content": CONTENT,
        "storage": Param("string", "Only list status for the specified storage.", optional=True),
        "enabled": Param(
            "boolean", "Only list stores which are enabled.", optional=True, default=0
        ),  # fmt: skip
        "target": Param("string", "List status for the target node.", optional=True),
        "format": Param("boolean", "Include information about formats", optional=True),
    },
    local=True,
    description="Get status for all datastores.",
)
def node_storage(
    ctx: Ctx,
    node: str,
    content: str | None = None,
    storage: str | None = None,
    enabled: int = 0,
    **_: Any,
) -> list[dict[str, Any]]:
    require_node(ctx, node)
    vols = _volumes(ctx)
    from corral.storage.volumes import available_on

    out = []
    for sid, cfg in sorted(vols.configs().items()):
        if storage and sid != storage:
            continue
        if not available_on(cfg, node):
            continue
        if not ctx.can(f"/storage/{sid}", ["Datastore.Audit", "Datastore.AllocateSpace"],
                       any_of=True):  # fmt: skip
            continue
        st = vols.status(sid, cfg=cfg)
        if content and content not in st["content"].split(","):
            continue
        if enabled and not st["enabled"]:
            continue
        out.append(_status_row(sid, st))
    return out


def _storage_perm(privs: list[str]) -> Any:
    def check(ctx: Ctx, storage: str, **_: Any) -> None:
        ctx.check(f"/storage/{storage}", privs, any_of=True)

    return check


AUDIT = _storage_perm(["Datastore.Audit", "Datastore.AllocateSpace"])
ALLOC = _storage_perm(["Datastore.AllocateSpace"])


@endpoint(
    "GET",
    "/nodes/{node}/storage/{storage}",
    params={"node": NODE, "storage": STORAGE_ID},
    perm=AUDIT,
    description="Directory index.",
)
def storage_index(ctx: Ctx, node: str, storage: str) -> list[dict[str, str]]:
    require_node(ctx, node)
    _config(ctx, storage)
    return [{"subdir": s} for s in ("content", "status", "upload")]


@endpoint(
    "GET",
    "/nodes/{node}/storage/{storage}/status",
    params={"node": NODE, "storage": STORAGE_ID},
    perm=AUDIT,
    local=True,
    description="Read storage status.",
)
def storage_status(ctx: Ctx, node: str, storage: str) -> dict[str, Any]:
    require_node(ctx, node)
    vols = _volumes(ctx)
    vols.config(storage)
    row = _status_row(storage, vols.status(storage))
    row.pop("storage")
    return row


def _volid(storage: str, volume: str) -> str:
    if ":" in volume:
        if volume.split(":", 1)[0] != storage:
            raise ParamError.one("volume", f"volume '{volume}' is not on storage '{storage}'")
        return volume
    return f"{storage}:{volume}"


def _attrs(ctx: Ctx, volid: str) -> dict[str, Any]:
    return ctx.store.get_value(keys.volume_attrs(volid)) or {}


@endpoint(
    "GET",
    "/nodes/{node}/storage/{storage}/content",
    params={
        "node": NODE,
        "storage": STORAGE_ID,
        "content": CONTENT,
        "vmid": Param("integer", "Only list images for this VM", optional=True, minimum=100),
    },
    perm=AUDIT,
    local=True,
    description="List storage content.",
)
def list_content(
    ctx: Ctx, node: str, storage: str, content: str | None = None, vmid: int | None = None
) -> list[dict[str, Any]]:
    require_node(ctx, node)
    rows = _volumes(ctx).list_volumes(storage, content=content, vmid=vmid)
    attrs = {
        kv.key.split("/", 1)[1]: kv.value
        for kv in ctx.store.range(keys.volume_attrs(f"{storage}:"))
    }
    out = []
    for row in rows:
        entry = {k: v for k, v in row.items() if k != "volname" and v is not None}
        a = attrs.get(row["volid"], {})
        if a.get("notes"):
            entry["notes"] = a["notes"]
        if a.get("protected"):
            entry["protected"] = 1
        out.append(entry)
    return out


def _size_kib(text: str) -> int:
    """Proxmox's `size`: kilobytes by default, or with an M or G suffix."""
    try:
        return parse_size(text, default_unit="K")
    except ValueError:
        raise ParamError.one("size", f"invalid size '{text}'") from None


@endpoint(
    "POST",
    "/nodes/{node}/storage/{storage}/content",
    params={
        "node": NODE,
        "storage": STORAGE_ID,
        "vmid": VMID,
        "filename": Param("string", "The name of the file to create.", max_length=200),
        "size": Param(
            "string",
            "Size in kilobyte (1024 bytes). Optional suffixes 'M' or 'G'.",
            pattern=r"\d+[MG]?",
        ),  # fmt: skip
        "format": Param(
            "string", "Format of the image.", optional=True, enum=("raw", "qcow2", "subvol", "vmdk")
        ),  # fmt: skip
    },
    perm=ALLOC,
    local=True,
    description="Allocate disk images.",
)
def alloc_content(
    ctx: Ctx, node: str, storage: str, vmid: int, filename: str, size: str,
    format: str | None = None,
) -> str:  # fmt: skip
    require_node(ctx, node)
    ctx.check(f"/vms/{vmid}", ["VM.Config.Disk"])
    fmt = format
    for ext in ("raw", "qcow2", "vmdk", "subvol"):
        if filename.endswith(f".{ext}"):
            if fmt and fmt != ext:
                raise ParamError.one("format", f"format '{fmt}' does not match filename")
            fmt = ext
    content = "rootdir" if fmt == "subvol" else "images"
    return str(
        _volumes(ctx).alloc(
            storage, vmid, size=_size_kib(size), fmt=fmt, content=content, name=filename
        )  # fmt: skip
    )


def _existing(ctx: Ctx, node: str, storage: str, volume: str) -> tuple[Any, str]:
    """The node's Volumes and the checked volume ID named by the path."""
    require_node(ctx, node)
    vols = _volumes(ctx)
    volid = _volid(storage, volume)
    vols.parse(volid)
    return vols, volid


@endpoint(
    "GET",
    "/nodes/{node}/storage/{storage}/content/{volume}",
    params={"node": NODE, "storage": STORAGE_ID, "volume": VOLUME},
    perm=AUDIT,
    local=True,
    description="Get volume attributes.",
)
def get_volume(ctx: Ctx, node: str, storage: str, volume: str) -> dict[str, Any]:
    vols, volid = _existing(ctx, node, storage, volume)
    vol = vols.parse(volid)
    # Only the owner's volumes: a full listing inspects every image of the storage.
    for row in vols.list_volumes(storage, vmid=vol.vmid):
        if row["volid"] == volid:
            break
    else:
        raise NotFound(what=f"volume '{volid}'")
    out: dict[str, Any] = {"size": row.get("size", 0), "format": row.get("format") or "raw",
                           "used": row.get("used", row.get("size", 0))}  # fmt: skip
    try:
        disk = vols.qemu_disk(volid) if vol.vtype in ("images", "iso") else None
    except NotSupported:
        disk = None
    if disk and disk.get("kind") == "file":
        out["path"] = disk["path"]
    elif disk and disk.get("kind") == "rbd":
        out["path"] = f"rbd:{disk['pool']}/{disk['image']}"
    elif vol.vtype not in ("images",):
        try:
            out["path"] = vols.file_path(volid)
        except NotSupported:
            pass
    if vol.vtype in ("images", "rootdir"):
        out["snapshots"] = vols.snapshots(volid)
    a = _attrs(ctx, volid)
    out["notes"] = a.get("notes", "")
    out["protected"] = int(bool(a.get("protected")))
    return out


@endpoint(
    "PUT",
    "/nodes/{node}/storage/{storage}/content/{volume}",
    params={
        "node": NODE,
        "storage": STORAGE_ID,
        "volume": VOLUME,
        "notes": Param("string", "The new notes.", optional=True, max_length=8192),
        "protected": Param("boolean", "Protection status.", optional=True),
        "size": Param(
            "string",
            "corral: grow the volume to this size (Proxmox size string).",
            optional=True,
            pattern=r"\+?\d+(\.\d+)?[KMGT]?",
        ),  # fmt: skip
    },
    perm=ALLOC,
    local=True,
    description="Update volume attributes (corral: and grow it with `size`).",
)
def update_volume(
    ctx: Ctx, node: str, storage: str, volume: str, notes: str | None = None,
    protected: int | None = None, size: str | None = None,
) -> None:  # fmt: skip
    vols, volid = _existing(ctx, node, storage, volume)
    if size is not None:
        current = int(vols.size(volid))
        grow = size.startswith("+")
        try:
            value = parse_size(size.lstrip("+"), default_unit="G")
        except ValueError:
            raise ParamError.one("size", f"invalid size '{size}'") from None
        target = current + value if grow else value
        if target < current:
            raise ParamError.one("size", "shrinking disks is not supported")
        if target > current:
            vols.resize(volid, target)
    if notes is not None or protected is not None:
        if size is None:
            vols.size(volid)  # the volume must exist
        key = keys.volume_attrs(volid)
        attrs = dict(ctx.store.get_value(key) or {})
        if notes is not None:
            attrs["notes"] = notes
        if protected is not None:
            attrs["protected"] = int(protected)
        ctx.store.put(key, attrs)


@endpoint(
    "DELETE",
    "/nodes/{node}/storage/{storage}/content/{volume}",
    params={
        "node": NODE,
        "storage": STORAGE_ID,
        "volume": VOLUME,
        "delay": Param(
            "integer", "Time to wait for the task to finish.", optional=True, minimum=1, maximum=30
        ),  # fmt: skip
    },
    perm=ALLOC,
    local=True,
    description="Delete volume.",
)
def delete_volume(ctx: Ctx, node: str, storage: str, volume: str, delay: int | None = None) -> Any:
    vols, volid = _existing(ctx, node, storage, volume)
    vol = vols.parse(volid)
    if vol.vmid is not None:
        ctx.check(f"/vms/{vol.vmid}", ["VM.Config.Disk"])
    if _attrs(ctx, volid).get("protected"):
        raise Conflict(f"volume '{volid}' is protected")
    users = _volume_users(ctx, volid)
    if users:
        raise Conflict(f"volume '{volid}' is used by guest {users[0]}")
    vols.size(volid)  # NotFound now rather than in the task
    # The UPID's id field cannot hold ':' or '/': name the storage, as the log names the volume.
    upid = ctx.submit(node=node, type="imgdel", id=storage, args={"volid": volid},
                      serial=f"vol:{volid}")  # fmt: skip
    if delay:
        status = ctx.tasks.wait(upid, timeout=delay)
        if status.get("status") == "stopped":
            return None if status.get("exitstatus") == "OK" else upid
    return upid


# -- corral extensions: per-volume snapshots and clones -----------------------------------


SNAP = Param("string", "The snapshot name.", format="pve-configid", max_length=40)


@endpoint(
    "GET",
    "/nodes/{node}/storage/{storage}/content/{volume}/snapshot",
    params={"node": NODE, "storage": STORAGE_ID, "volume": VOLUME},
    perm=AUDIT,
    local=True,
    description="corral: list the volume's snapshots.",
)
def list_snapshots(ctx: Ctx, node: str, storage: str, volume: str) -> list[dict[str, str]]:
    vols, volid = _existing(ctx, node, storage, volume)
    return [{"name": s} for s in vols.snapshots(volid)]


@endpoint(
    "POST",
    "/nodes/{node}/storage/{storage}/content/{volume}/snapshot",
    params={"node": NODE, "storage": STORAGE_ID, "volume": VOLUME, "snapname": SNAP},
    perm=ALLOC,
    local=True,
    description="corral: snapshot the volume.",
)
def create_snapshot(ctx: Ctx, node: str, storage: str, volume: str, snapname: str) -> None:
    vols, volid = _existing(ctx, node, storage, volume)
    vols.snapshot(volid, snapname)


@endpoint(
    "DELETE",
    "/nodes/{node}/storage/{storage}/content/{volume}/snapshot/{snapname}",
    params={"node": NODE, "storage": STORAGE_ID, "volume": VOLUME, "snapname": SNAP},
    perm=ALLOC,
    local=True,
    description="corral: delete a snapshot of the volume.",
)
def delete_snapshot(ctx: Ctx, node: str, storage: str, volume: str, snapname: str) -> None:
    vols, volid = _existing(ctx, node, storage, volume)
    vols.snapshot_delete(volid, snapname)


@endpoint(
    "POST",
    "/nodes/{node}/storage/{storage}/content/{volume}/snapshot/{snapname}/rollback",
    params={"node": NODE, "storage": STORAGE_ID, "volume": VOLUME, "snapname": SNAP},
    perm=ALLOC,
    local=True,
    description="corral: roll the volume back to a snapshot.",
)
def rollback_snapshot(ctx: Ctx, node: str, storage: str, volume: str, snapname: str) -> None:
    vols, volid = _existing(ctx, node, storage, volume)
    users = _volume_users(ctx, volid)
    if users:
        raise Conflict(f"volume '{volid}' is used by guest {users[0]}: roll back the guest")
    vols.snapshot_rollback(volid, snapname)


@endpoint(
    "POST",
    "/nodes/{node}/storage/{storage}/content/{volume}/clone",
    params={
        "node": NODE,
        "storage": STORAGE_ID,
        "volume": VOLUME,
        "vmid": VMID,
        "snapname": Param(
            "string", "Clone from this snapshot.", optional=True, format="pve-configid"
        ),  # fmt: skip
        "full": Param(
            "boolean", "Full copy instead of a linked clone.", optional=True, default=0
        ),  # fmt: skip
    },
    perm=ALLOC,
    local=True,
    description="corral: clone the volume for another guest (linked where the storage can).",
)
def clone_volume(
    ctx: Ctx, node: str, storage: str, volume: str, vmid: int, snapname: str | None = None,
    full: int = 0,
) -> str:  # fmt: skip
    ctx.check(f"/vms/{vmid}", ["VM.Config.Disk"])
    vols, volid = _existing(ctx, node, storage, volume)
    return str(vols.clone(volid, vmid, snap=snapname, full=bool(full)))


@endpoint(
    "POST",
    "/nodes/{node}/storage/{storage}/content/{volume}/base",
    params={"node": NODE, "storage": STORAGE_ID, "volume": VOLUME},
    perm=ALLOC,
    local=True,
    description="corral: turn the volume into a read-only base for linked clones.",
)
def make_base(ctx: Ctx, node: str, storage: str, volume: str) -> str:
    vols, volid = _existing(ctx, node, storage, volume)
    if _volume_users(ctx, volid):
        raise Conflict(f"volume '{volid}' is in use")
    return str(vols.create_base(volid))


# -- upload ------------------------------------------------------------------------------


class _HashingFile:
    """The upload's destination: written once, hashed on the way (no second read)."""

    def __init__(self, path: str, algorithm: str | None) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.f: IO[bytes] = os.fdopen(fd, "wb")
        self.hash = hashlib.new(algorithm) if algorithm else None
        self.size = 0

    def write(self, data: bytes) -> int:
        if self.hash is not None:
            self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def seek(self, *args: Any) -> int:
        return 0  # werkzeug rewinds finished parts; the file is never read back here

    def read(self, *_: Any) -> bytes:
        return b""

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        if not self.f.closed:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


@endpoint(
    "POST",
    "/nodes/{node}/storage/{storage}/upload",
    params={"node": NODE, "storage": STORAGE_ID},
    raw=True,
    local=True,
    description="Upload templates and ISO images (multipart: content, filename, file, "
    "checksum, checksum-algorithm).",
)
def upload(ctx: Ctx, node: str, storage: str) -> str:
    from werkzeug.formparser import parse_form_data

    from corral.storage.plugin import out_of_space
    from corral.storage.volid import parse_path_volname

    require_node(ctx, node)
    ctx.check(f"/storage/{storage}", ["Datastore.AllocateTemplate"])
    vols = _volumes(ctx)
    plugin, cfg = vols.resolve(storage)
    req = ctx.request
    # Given in the query, the algorithm hashes the file as it streams in.
    algorithm = req.args.get("checksum-algorithm")
    files: list[_HashingFile] = []
    # Stage beside the content folders (STORAGE/template/...), so the final move is a rename.
    staging = os.path.dirname(os.path.dirname(plugin.file_path(cfg, volname="iso/x.iso")))

    def factory(**_: Any) -> Any:
        if files:
            raise ParamError.one("file", "only one file per upload")
        path = os.path.join(staging, f".upload-{os.getpid()}-{id(files)}-{len(files)}.tmp")
        files.append(_HashingFile(path, algorithm if algorithm in CHECKSUMS else None))
        return files[-1]

    with Reverter() as undo:
        undo.add(lambda: _remove_staged(files))
        os.makedirs(staging, exist_ok=True)
        with out_of_space(storage, "the uploaded file"):  # a 507 naming it, not a 500
            _, form, upload_files = parse_form_data(req.environ, stream_factory=cast(Any, factory))
            for f in files:
                f.close()
        fields = {**{k: v for k, v in req.args.items()}, **{k: form[k] for k in form}}
        content = fields.get("content")
        filename = fields.get("filename") or next(
            (u.filename for u in upload_files.values() if u.filename), None
        )
        errors = {}
        if content not in ("iso", "vztmpl"):
            errors["content"] = "upload is only supported for 'iso' and 'vztmpl'"
        if not filename:
            errors["filename"] = "property is missing and it is not optional"
        if not files:
            errors["file"] = "property is missing and it is not optional"
        if errors:
            raise ParamError(errors)
        assert content is not None and filename is not None
        if content not in plugin.enabled_content(cfg):
            raise ParamError.one("content", f"storage '{storage}' does not support {content}")
        name = os.path.basename(filename)
        vol = parse_path_volname(f"{content}/{name}", param="filename")
        checksum = fields.get("checksum")
        algo = fields.get("checksum-algorithm")
        if checksum or algo:
            if algo not in CHECKSUMS:
                raise ParamError.one("checksum-algorithm", f"one of {', '.join(CHECKSUMS)}")
            if not checksum:
                raise ParamError.one("checksum", "required with checksum-algorithm")
            f = files[0]
            if f.hash is None or f.hash.name != algo:
                # The algorithm came only in the body, after the file: hash what was written.
                h = hashlib.new(algo)
                with open(f.path, "rb") as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                digest = h.hexdigest()
            else:
                digest = f.hash.hexdigest()
            if digest.lower() != checksum.strip().lower():
                raise ParamError.one(
                    "checksum", f"checksum mismatch: got '{digest}' != expected '{checksum}'"
                )
        dest = plugin.file_path(cfg, volname=f"{content}/{vol.name}")
        if os.path.exists(dest):
            raise Conflict(f"volume '{storage}:{content}/{vol.name}' already exists")
        upid = ctx.submit(
            node=node,
            type="imgcopy",
            id=storage,
            args={"src": files[0].path, "dest": dest, "size": files[0].size},
        )
        undo.success()
    return str(upid)


def _remove_staged(files: list[_HashingFile]) -> None:
    for f in files:
        f.close()
        if os.path.exists(f.path):
            os.unlink(f.path)


@endpoint(
    "POST",
    "/nodes/{node}/storage/{storage}/import",
    params={"node": NODE, "storage": STORAGE_ID},
    raw=True,
    description="corral (node to node): import a volume streamed in the body; query "
    "parameters vmid, format (raw, qcow2, tar), content. Only root@pam (another node).",
)
def import_volume(ctx: Ctx, node: str, storage: str) -> str:
    """The receiving end of a migration's volume copy (Proxmox's `pvesm import`)."""
    from corral.cluster.errors import Forbidden

    require_node(ctx, node)
    if node != ctx.node:
        raise ParamError.one("node", f"imports go to the receiving node itself, not '{ctx.node}'")
    if ctx.identity.userid != "root@pam":
        raise Forbidden("volume import is for the cluster's nodes only (root@pam)")
    args = ctx.request.args
    errors = {}
    try:
        vmid = int(args.get("vmid", ""))
        if vmid < 100:
            raise ValueError
    except ValueError:
        errors["vmid"] = "a VMID (integer >= 100) is required"
    fmt = args.get("format", "")
    if fmt not in ("raw", "qcow2", "tar"):
        errors["format"] = "one of raw, qcow2, tar"
    content = args.get("content") or ("rootdir" if fmt == "tar" else "images")
    if content not in ("images", "rootdir"):
        errors["content"] = "one of images, rootdir"
    if errors:
        raise ParamError(errors)
    stream = ctx.request.stream
    return str(_volumes(ctx).import_(storage, stream=stream, fmt=fmt, vmid=vmid, content=content))
