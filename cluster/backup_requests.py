"""What a vzdump or restore request must satisfy before its task is queued.

The web layer (corral.web.api_backup, the create endpoints) parses requests
and checks permissions; the rules are here: which guests a vzdump selection
names on a node, which vzdump options corral takes, and whether an archive
can be restored to a VMID (claimed, or with `force` locked `restore`).
Errors are ParamError naming the parameter.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import archive, guest_status, guests, keys, restore
from corral.cluster.errors import ParamError
from corral.cluster.store_api import StoreAPI
from corral.cluster.task_client import Tasks
from corral.storage.volid import split_volid

# Create parameters that belong to the restore itself, not to the guest's config.
RESTORE_ONLY = ("restore", "ostemplate", "archive", "storage", "unique", "force", "vmid",
                "pool", "bwlimit", "live-restore")  # fmt: skip


def flag(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes", "on")


def split_ids(text: str | None) -> list[int]:
    return [int(x) for x in (text or "").replace(";", ",").replace(" ", ",").split(",") if x]


def selection(
    store: StoreAPI, node: str, *, vmid: str | None, all: int, exclude: str | None,
    pool: str | None,
) -> list[int]:  # fmt: skip
    """The VMIDs of `node` a vzdump call names, in order."""
    if vmid:
        ids = split_ids(vmid)
        for one in ids:
            rec = store.get_value(keys.guest(one))
            if rec is None:
                raise ParamError.one("vmid", f"guest {one} does not exist")
            if rec["node"] != node:
                raise ParamError.one("vmid", f"guest {one} is on node '{rec['node']}'")
        return ids
    if pool:
        from corral.cluster import access_groups
        from corral.cluster.errors import NotFound

        try:
            members = set(access_groups.pool(store, pool).get("vms", []))
        except NotFound:
            raise ParamError.one("pool", f"pool '{pool}' does not exist") from None
        return sorted(r["vmid"] for r in guests.local_guests(store, node) if r["vmid"] in members)
    if all or exclude:
        skip = set(split_ids(exclude))
        return sorted(r["vmid"] for r in guests.local_guests(store, node) if r["vmid"] not in skip)
    raise ParamError.one("vmid", "specify guests (vmid), all=1 or a pool")


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """vzdump options as corral runs them: compress zstd|gzip|none, storage default local."""
    compress = str(opts.get("compress") or "0")
    if compress == "lzo":
        raise ParamError.one("compress", "lzo is not supported by corral (use zstd or gzip)")
    opts["compress"] = {"1": "zstd", "0": "none"}.get(compress, compress)
    archive.compressor(opts["compress"])
    opts.setdefault("storage", "local")
    return opts


def plan_vzdump(
    store: StoreAPI, node: str, params: dict[str, Any], volumes: Any
) -> tuple[list[int], dict[str, Any]]:
    """(VMIDs, options) of a vzdump request on `node`."""
    opts = check_options({k: v for k, v in params.items() if v is not None})
    if store.get_value(keys.storage(opts["storage"])) is None:
        raise ParamError.one("storage", f"storage '{opts['storage']}' does not exist")
    if volumes is not None and "backup" not in volumes.content_of(opts["storage"]):
        raise ParamError.one("storage", f"storage '{opts['storage']}' does not hold backups "
                             "(content type 'backup')")  # fmt: skip
    ids = selection(store, node, vmid=opts.pop("vmid", None), all=opts.pop("all", 0),
                    exclude=opts.pop("exclude", None), pool=opts.pop("pool", None))  # fmt: skip
    if not ids:
        raise ParamError.one("vmid", f"no guests to back up on node '{node}'")
    return ids, opts


def submit_vzdump(tasks: Tasks, node: str, ids: list[int], opts: dict[str, Any], user: str) -> str:
    return tasks.submit(node=node, type="vzdump", id=str(ids[0]) if len(ids) == 1 else "",
                        user=user, args={"vmids": ids, "opts": opts},
                        serial=f"vzdump:{node}")  # fmt: skip


# -- restores ---------------------------------------------------------------------------


def is_restore(type: str, raw: dict[str, Any]) -> bool:
    return bool(raw.get("archive")) if type == "qemu" else flag(raw.get("restore") or 0)


def drop_restore_params(type: str, raw: dict[str, Any]) -> None:
    """A plain create: `unique` means nothing, `force` (overwrite) is refused."""
    if flag(raw.pop("force", 0) or 0):
        raise ParamError.one("force", "corral never overwrites an existing guest on create "
                             "(force=1 is for restores)")  # fmt: skip
    for key in ("unique", "restore", "archive", *(("storage",) if type == "qemu" else ())):
        raw.pop(key, None)


def archive_of(type: str, raw: dict[str, Any]) -> tuple[str, str]:
    """(archive volume ID, its storage) named by a restore request."""
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
    return volid, storage


def request_restore(
    store: StoreAPI, tasks: Tasks, type: str, node: str, vmid: int, raw: dict[str, Any],
    *, user: str, start: bool,
) -> str:  # fmt: skip
    """Claim `vmid` (or lock the stopped guest it replaces, with force=1) and queue
    the restore on `node`; its UPID."""
    volid, _ = archive_of(type, raw)
    target = raw.get("storage")
    if target and store.get_value(keys.storage(str(target))) is None:
        raise ParamError.one("storage", f"storage '{target}' does not exist")
    if flag(raw.get("live-restore") or 0):
        raise ParamError.one("live-restore", "live restore is not supported by corral")
    overrides = {k: v for k, v in raw.items() if k not in RESTORE_ONLY}
    force = flag(raw.get("force") or 0)
    existing = store.get_value(keys.guest(vmid))
    if existing is not None:
        if not force:
            raise ParamError.one("vmid", f"guest {vmid} already exists (force=1 replaces it)")
        if existing["type"] != type or existing["node"] != node:
            raise ParamError.one("vmid", f"guest {vmid} is a {existing['type']} on "
                                 f"'{existing['node']}'")  # fmt: skip
        if guest_status.guest_live(store, node, vmid).get("status") not in (None, "stopped"):
            raise ParamError.one("vmid", f"guest {vmid} is running - stop it first")
        guests.set_lock(store, vmid, "restore")
    else:
        force = False
        guests.claim(store, guests.new_record(type, vmid, node, {}), user=user)
    args = {
        "vmid": vmid,
        "archive": volid,
        "storage": target,
        "unique": int(flag(raw.get("unique") or 0)),
        "force": int(force),
        "start": int(start),
        "overrides": overrides,
    }
    try:
        return tasks.submit(node=node, type=restore.TASK_TYPES[type], id=str(vmid), user=user,
                            args=args, serial=guests.serial(vmid))  # fmt: skip
    except BaseException:
        if force:
            guests.set_lock(store, vmid, None, expect="restore")
        else:
            store.delete(keys.guest(vmid))
        raise
