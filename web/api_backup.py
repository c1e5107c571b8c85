"""POST /nodes/{node}/vzdump: back up guests of a node (corral.cluster.backup).

The selection (vmid list, all, exclude, pool) is resolved here against the
guests the node owns; the backups run as one `vzdump` task on that node.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import archive, guests, keys
from corral.cluster.errors import ParamError
from corral.cluster.schema import NODE, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node

VMID_LIST = r"\d+(?:[,; ]+\d+)*"
OPTIONS: dict[str, Param] = {
    "vmid": Param(
        "string", "The ID of the guest system you want to backup.", optional=True, pattern=VMID_LIST
    ),  # fmt: skip
    "all": Param(
        "boolean", "Backup all known guest systems on this host.", optional=True, default=0
    ),  # fmt: skip
    "exclude": Param(
        "string",
        "Exclude specified guest systems (assumes --all)",
        optional=True,
        pattern=VMID_LIST,
    ),  # fmt: skip
    "pool": Param(
        "string", "Backup all known guest systems included in the specified pool.", optional=True
    ),  # fmt: skip
    "mode": Param(
        "string",
        "Backup mode.",
        optional=True,
        default="snapshot",
        enum=("snapshot", "suspend", "stop"),
    ),  # fmt: skip
    "compress": Param(
        "string",
        "Compress dump file.",
        optional=True,
        default="0",
        enum=("0", "1", "gzip", "lzo", "zstd"),
    ),  # fmt: skip
    "storage": Param(
        "string", "Store resulting file to this storage.", optional=True, format="pve-storage-id"
    ),  # fmt: skip
    "notes-template": Param(
        "string",
        "Template string for generating notes for the backup(s).",
        optional=True,
        max_length=1024,
    ),  # fmt: skip
    "bwlimit": Param("integer", "Limit I/O bandwidth (in KiB/s).", optional=True, minimum=0),
    "protected": Param("boolean", "If true, mark backup(s) as protected.", optional=True),
    "remove": Param(
        "boolean", "Prune older backups according to 'prune-backups'.", optional=True, default=1
    ),  # fmt: skip
    "prune-backups": Param(
        "string",
        "Use these retention options instead of those from the storage configuration.",
        optional=True,
    ),  # fmt: skip
}


def split_ids(text: str | None) -> list[int]:
    return [int(x) for x in (text or "").replace(";", ",").replace(" ", ",").split(",") if x]


def selection(
    ctx: Ctx, node: str, *, vmid: str | None, all: int, exclude: str | None, pool: str | None
) -> list[int]:
    """The VMIDs of `node` a vzdump call names, in order; ParamError naming the key."""
    here = {rec["vmid"]: rec for rec in guests.local_guests(ctx.store, node)}
    if vmid:
        ids = split_ids(vmid)
        for one in ids:
            rec = ctx.store.get_value(keys.guest(one))
            if rec is None:
                raise ParamError.one("vmid", f"guest {one} does not exist")
            if rec["node"] != node:
                raise ParamError.one("vmid", f"guest {one} is on node '{rec['node']}'")
        return ids
    if pool:
        raise ParamError.one("pool", f"pool '{pool}' does not exist")
    if all or exclude:
        skip = set(split_ids(exclude))
        return sorted(v for v in here if v not in skip)
    raise ParamError.one("vmid", "specify guests (vmid), all=1 or a pool")


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    compress = str(opts.get("compress") or "0")
    if compress == "lzo":
        raise ParamError.one("compress", "lzo is not supported by corral (use zstd or gzip)")
    opts["compress"] = {"1": "zstd", "0": "none"}.get(compress, compress)
    archive.compressor(opts["compress"])
    opts.setdefault("storage", "local")
    return opts


def vzdump_perm(ctx: Ctx, **params: Any) -> None:
    ctx.check(f"/storage/{params.get('storage') or 'local'}", ["Datastore.AllocateSpace"])
    for vmid in split_ids(params.get("vmid")):
        ctx.check(f"/vms/{vmid}", ["VM.Backup"])


@endpoint(
    "POST",
    "/nodes/{node}/vzdump",
    params={"node": NODE, **OPTIONS},
    perm=vzdump_perm,
    description="Create backup.",
)
def vzdump(ctx: Ctx, node: str, **params: Any) -> str:
    require_node(ctx, node)
    opts = check_options({k: v for k, v in params.items() if v is not None})
    if ctx.store.get_value(keys.storage(opts["storage"])) is None:
        raise ParamError.one("storage", f"storage '{opts['storage']}' does not exist")
    volumes = ctx.services.get("volumes")
    if volumes is not None and "backup" not in volumes.content_of(opts["storage"]):
        raise ParamError.one("storage", f"storage '{opts['storage']}' does not hold backups "
                             "(content type 'backup')")  # fmt: skip
    ids = selection(ctx, node, vmid=opts.pop("vmid", None), all=opts.pop("all", 0),
                    exclude=opts.pop("exclude", None), pool=opts.pop("pool", None))  # fmt: skip
    if not ids:
        raise ParamError.one("vmid", f"no guests to back up on node '{node}'")
    for vmid in ids:
        if not ctx.can(f"/vms/{vmid}", ["VM.Backup"]):
            ctx.check(f"/vms/{vmid}", ["VM.Backup"])
    return ctx.submit(
        node=node,
        type="vzdump",
        id=str(ids[0]) if len(ids) == 1 else "",
        args={"vmids": ids, "opts": opts},
        serial=f"vzdump:{node}",
    )


# -- restore: POST /nodes/{node}/lxc restore=1, POST /nodes/{node}/qemu archive= -------------

_RESTORE_PARAMS = ("restore", "ostemplate", "archive", "storage", "unique", "force", "vmid",
                   "pool", "bwlimit", "live-restore")  # fmt: skip


def restore_params(type: str) -> dict[str, Param]:
    """What POST /nodes/{node}/{type} takes for a restore (declared by that endpoint)."""
    out = {
        "force": Param(
            "boolean", "Allow to overwrite an existing guest (restore).", optional=True
        ),  # fmt: skip
        "unique": Param("boolean", "Assign a unique random ethernet address.", optional=True),
    }
    if type == "lxc":
        out["restore"] = Param("boolean", "Mark this as restore task.", optional=True)
    else:
        out["archive"] = Param("string", "The backup archive.", optional=True, max_length=255)
        out["storage"] = Param("string", "Default storage.", optional=True,
                               format="pve-storage-id")  # fmt: skip
    return out


def drop_restore_params(type: str, raw: dict[str, Any]) -> None:
    """A plain create: `unique` means nothing, `force` (overwrite) is refused."""
    if _flag(raw.pop("force", 0) or 0):
        raise ParamError.one("force", "corral never overwrites an existing guest on create "
                             "(force=1 is for restores)")  # fmt: skip
    for key in ("unique", "restore", "archive", *(("storage",) if type == "qemu" else ())):
        raw.pop(key, None)


def _flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def is_restore(type: str, raw: dict[str, Any]) -> bool:
    return bool(raw.get("archive")) if type == "qemu" else _flag(raw.get("restore") or 0)


def restore_request(
    ctx: Ctx, type: str, node: str, vmid: int, raw: dict[str, Any], *, start: bool
) -> str:
    """Check a restore request and queue it on `node`; its UPID."""
    from corral.cluster import clones, restore
    from corral.storage.volid import split_volid

    require_node(ctx, node)
    param = "archive" if type == "qemu" else "ostemplate"
    volid = str(raw.get(param) or "")
    if not volid:
        raise ParamError.one(param, "the backup archive to restore is missing")
    storage, volname = split_volid(volid, param=param)
    if not volname.startswith("backup/"):
        raise ParamError.one(param, f"'{volid}' is not a backup archive")
    parsed = archive.parse_name(volname.split("/", 1)[1])
    if parsed is None or parsed[0] != type:
        raise ParamError.one(param, f"'{volid}' is not a corral/vzdump {type} archive")
    ctx.check(f"/storage/{storage}", ["Datastore.Audit"])
    target = raw.get("storage")
    if target:
        if ctx.store.get_value(keys.storage(str(target))) is None:
            raise ParamError.one("storage", f"storage '{target}' does not exist")
        ctx.check(f"/storage/{target}", ["Datastore.AllocateSpace"])
    if _flag(raw.get("live-restore") or 0):
        raise ParamError.one("live-restore", "live restore is not supported by corral")
    overrides = {k: v for k, v in raw.items() if k not in _RESTORE_PARAMS}
    force = _flag(raw.get("force") or 0)
    existing = ctx.store.get_value(keys.guest(vmid))
    if existing is not None:
        if not force:
            raise ParamError.one("vmid", f"guest {vmid} already exists (force=1 replaces it)")
        if existing["type"] != type or existing["node"] != node:
            raise ParamError.one("vmid", f"guest {vmid} is a {existing['type']} on "
                                 f"'{existing['node']}'")  # fmt: skip
        doc = ctx.store.get_value(keys.guest_status(node)) or {}
        if doc.get(str(vmid), {}).get("status") not in (None, "stopped"):
            raise ParamError.one("vmid", f"guest {vmid} is running - stop it first")
        guests.set_lock(ctx.store, vmid, "restore")
    else:
        force = False
        clones.claim(ctx.store, clones.new_record(type, vmid, node, {}), user=ctx.user)
    args = {
        "vmid": vmid,
        "archive": volid,
        "storage": target,
        "unique": int(_flag(raw.get("unique") or 0)),
        "force": int(force),
        "start": int(start),
        "overrides": overrides,
    }
    try:
        return ctx.submit(node=node, type=restore.TASK_TYPES[type], id=str(vmid), args=args,
                          serial=guests.serial(vmid))  # fmt: skip
    except BaseException:
        if force:
            guests.set_lock(ctx.store, vmid, None, expect="restore")
        else:
            ctx.store.delete(keys.guest(vmid))
        raise


@endpoint(
    "GET",
    "/nodes/{node}/vzdump/extractconfig",
    params={"node": NODE, "volume": Param("string", "Volume identifier", max_length=512)},
    perm=lambda ctx, volume, **_: ctx.check(
        f"/storage/{volume.partition(':')[0]}", ["Datastore.Audit"]
    ),
    local=True,
    description="Extract configuration from vzdump backup archive.",
)
def extractconfig(ctx: Ctx, node: str, volume: str) -> str:
    from corral.storage.volid import split_volid

    require_node(ctx, node)
    _, volname = split_volid(volume)
    parsed = (
        archive.parse_name(volname.partition("/")[2]) if volname.startswith("backup/") else None
    )
    if parsed is None:
        raise ParamError.one("volume", f"'{volume}' is not a backup archive")
    volumes = ctx.services.get("volumes")
    if volumes is None:
        raise ParamError.one("volume", "no storage on this node")
    return archive.read_config_text(volumes.file_path(volume), parsed[0])
