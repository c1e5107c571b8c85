"""Clones and templates of guests, written once for containers and VMs.

- clone: a new guest `newid` from a guest's current state or one of its
  snapshots. `full` copies every disk (onto `storage` if given, through the
  storages' export/import streams when it differs); otherwise each disk is a
  linked clone, which storages offer for template bases (dir, btrfs, rbd,
  zfs) or for snapshots (btrfs, rbd, zfs). The copy gets a fresh identity
  (MACs, machine IDs) from its driver. Every volume made is freed again if
  a later step fails, and the new record goes with them.
- template: the guest's disks become read-only bases (`base-100-disk-0`) and
  `template: 1` is set; a template never starts, and its linked clones share
  its data.

Proxmox's rules apply: a running guest can only be fully cloned; linked
clones need a template (or a snapshot where the storage clones those); a
template must be stopped and without snapshots.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from corral.cluster import guests, keys, snapshots
from corral.cluster.errors import Conflict, CorralError, NotSupported, ParamError
from corral.cluster.guest_driver import GuestDriver, LogFn, VolumeAccess
from corral.cluster.tasks import TaskContext, task_handler
from corral.cluster.undo import Reverter

TASK_TYPES = {
    "lxc": {"clone": "vzclone", "template": "vztemplate"},
    "qemu": {"clone": "qmclone", "template": "qmtemplate"},
}
# Keys a copy never inherits: identity of the original, its snapshot state.
_DROP = ("template", "parent", "lock")


# A clone's record is claimed as any new guest's is (corral.cluster.guests).
claim = guests.claim
new_record = guests.new_record


def content_of(key: str) -> str:
    return "rootdir" if key == "rootfs" or key.startswith("mp") else "images"


def stream_copy(
    volumes: VolumeAccess,
    volid: str,
    storage: str,
    vmid: int,
    *,
    content: str,
    snap: str | None = None,
) -> str:
    """A full copy of `volid` as a new volume of `vmid` on another storage, streamed
    through a pipe (export on one thread, import on this one): nothing staged."""
    import os

    formats = volumes.export_formats(volid)
    fmt = "tar" if "tar" in formats else "raw"
    if fmt not in formats:
        raise NotSupported(what=f"copying '{volid}' to another storage")
    size = None if fmt == "tar" else volumes.size(volid)
    rfd, wfd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        with os.fdopen(wfd, "wb") as out:
            try:
                volumes.export(volid, fmt=fmt, out=out, snap=snap)
            except BaseException as err:  # noqa: BLE001 - re-raised by the caller
                failure.append(err)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        with os.fdopen(rfd, "rb") as stream:
            new = volumes.import_(
                storage, stream=stream, fmt=fmt, vmid=vmid, content=content, size=size
            )
    finally:
        thread.join(timeout=3600)
    if failure:
        try:
            volumes.free(new)
        finally:
            raise failure[0]
    return new


def replace_volumes(
    driver: GuestDriver, config: dict[str, Any], mapping: dict[str, str]
) -> dict[str, Any]:
    """`config` with each volume ID of `mapping` (old -> new) replaced in its key."""
    out = dict(config)
    for key, volid in driver.volumes_of(config).items():
        if volid in mapping:
            value = str(config[key])
            out[key] = value.replace(volid, mapping[volid], 1)
    return out


# -- checks the API runs before queueing ------------------------------------------------


def check_target_storage(
    store: Any, driver: GuestDriver, config: dict[str, Any], *, kind: str, target: str,
    storage: str | None,
) -> None:  # fmt: skip
    """A clone onto another node must land on storage that node sees: every copied
    disk's storage (or `storage`, where they all go) must be shared, as Proxmox
    asks ("can't clone VM to node ... (VM uses local storage)")."""
    local = []
    for key, volid in sorted(snapshots.snapshot_volumes(driver, config).items()):
        sid = storage or volid.partition(":")[0]
        conf = store.get_value(keys.storage(sid)) or {}
        if not int(conf.get("shared") or 0):
            local.append(f"{key} on '{sid}'")
    if local:
        raise ParamError.one(
            "target",
            f"can't clone {kind} to node '{target}' ({kind} uses local storage: "
            f"{', '.join(local)}); clone onto a shared storage or migrate the clone",
        )


def check_clone(
    rec: dict[str, Any], newid: int, *, full: bool | None, snapname: str | None
) -> bool:
    """Whether the clone is full (Proxmox: always for a non-template)."""
    if newid == rec["vmid"]:
        raise ParamError.one("newid", "must differ from the source's VMID")
    if snapname:
        snapshots.get_snapshot(rec, snapname)
    is_template = bool(rec["config"].get("template"))
    if not is_template and full is not None and not full and not snapname:
        raise ParamError.one("full", "linked clone feature needs a template (or a snapshot)")
    return bool(full) if (is_template or snapname) and full is not None else not is_template


def _copy_disks(
    driver: GuestDriver,
    volumes: VolumeAccess,
    config: dict[str, Any],
    newid: int,
    *,
    full: bool,
    storage: str | None,
    snap: str | None,
    undo: Reverter,
    log: LogFn,
    check_abort: Callable[[], None],
) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for key, volid in sorted(snapshots.snapshot_volumes(driver, config).items()):
        check_abort()
        here = volid.partition(":")[0]
        if full and storage and storage != here:
            log(f"copying '{key}' ({volid}) to storage '{storage}'")
            new = stream_copy(volumes, volid, storage, newid, content=content_of(key), snap=snap)
        elif full:
            log(f"copying '{key}' ({volid})")
            new = volumes.clone(volid, newid, snap=snap, full=True)
        else:
            if not volumes.has_feature(volid, "clone", snap):
                raise NotSupported(what=f"linked clone of '{key}' ({volid})")
            log(f"linked clone of '{key}' ({volid})")
            new = volumes.clone(volid, newid, snap=snap)
        undo.add(lambda v=new: volumes.free(v))  # type: ignore[misc]
        mapping[volid] = new
        log(f"'{key}' is now {new}")
    return mapping


# -- task handlers (on the source's node) ------------------------------------------------------


def _clone(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid, newid, snap = args["vmid"], args["newid"], args.get("snapname")
    rec = guests._record(ctx, args)
    driver, volumes = guests._driver(ctx, rec["type"]), guests._volumes(ctx)
    config = dict(snapshots.get_snapshot(rec, snap)["config"] if snap else rec["config"])
    full = bool(args.get("full"))
    running = driver.status(vmid, rec["config"]).get("status") in ("running", "paused")
    target = args.get("target") or ctx.node
    kind = guests._kind(rec)
    if target != ctx.node:
        check_target_storage(ctx.store, driver, config, kind=kind, target=target,
                             storage=args.get("storage"))  # fmt: skip
    lock_source = not rec["config"].get("template")
    if lock_source:
        snapshots._lock(ctx, vmid, "clone")
    try:
        with Reverter() as undo:
            frozen = running and not snap and driver.freeze(vmid, config, log=ctx.log)
            try:
                mapping = _copy_disks(
                    driver, volumes, config, newid, full=full, storage=args.get("storage"),
                    snap=snap, undo=undo, log=ctx.log, check_abort=ctx.check_abort,
                )  # fmt: skip
            finally:
                if frozen:
                    driver.thaw(vmid, config, log=ctx.log)
            new = replace_volumes(driver, config, mapping)
            for key in _DROP:
                new.pop(key, None)
            new = driver.renew_identity(newid, new)
            name_key = "hostname" if rec["type"] == "lxc" else "name"
            if args.get("name"):
                new[name_key] = args["name"]
            elif rec["type"] == "qemu" and new.get("name"):
                new["name"] = f"Copy-of-VM-{new['name']}"  # Proxmox's default
            if args.get("description") is not None:
                new["description"] = args["description"]
            if target == ctx.node:
                driver.adopt(newid, new, volumes=volumes, log=ctx.log)

            def done(r: dict[str, Any]) -> dict[str, Any]:
                r["config"], r["node"], r["lock"] = new, target, None
                return r

            guests.update_record(ctx.store, newid, done)
            undo.success()
    except BaseException:
        ctx.store.delete(keys.guest(newid))
        raise
    finally:
        if lock_source:
            snapshots._unlock(ctx, vmid, "clone")
    ctx.log(f"{kind} {vmid} cloned to {newid} ({'full' if full else 'linked'})")


def _template(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid = args["vmid"]
    rec = guests._record(ctx, args)
    driver, volumes = guests._driver(ctx, rec["type"]), guests._volumes(ctx)
    if rec["config"].get("template"):
        raise Conflict(f"{guests._kind(rec)} {vmid} is already a template")
    if driver.status(vmid, rec["config"]).get("status") != "stopped":
        raise Conflict(f"{guests._kind(rec)} {vmid} is running - can't convert to a template")
    if rec.get("snapshots"):
        raise Conflict(f"{guests._kind(rec)} {vmid} has snapshots - delete them first")
    vols = snapshots.snapshot_volumes(driver, rec["config"])
    if args.get("disk"):
        if args["disk"] not in vols:
            raise ParamError.one("disk", f"'{args['disk']}' is not a disk of VM {vmid}")
        vols = {args["disk"]: vols[args["disk"]]}
    bad = [f"{k} ({v})" for k, v in sorted(vols.items()) if not volumes.has_feature(v, "template")]
    if bad:
        raise NotSupported(what=f"template of {', '.join(bad)}")
    snapshots._lock(ctx, vmid, "template")
    mapping: dict[str, str] = {}
    try:
        for key, volid in sorted(vols.items()):
            mapping[volid] = volumes.create_base(volid)
            ctx.log(f"'{key}': {volid} is now the base {mapping[volid]}")
    except BaseException as err:
        # A base cannot be turned back here: record what was converted, so
        # the config names the volumes that exist, and report.
        if isinstance(err, CorralError):
            ctx.log(f"conversion stopped: {err}")

        def partial(r: dict[str, Any]) -> dict[str, Any]:
            r["config"] = replace_volumes(driver, r["config"], mapping)
            r["lock"] = None
            return r

        guests.update_record(ctx.store, vmid, partial)
        raise

    def commit(r: dict[str, Any]) -> dict[str, Any]:
        r["config"] = replace_volumes(driver, r["config"], mapping)
        r["config"]["template"] = 1
        r["lock"] = None
        return r

    rec = guests.update_record(ctx.store, vmid, commit)
    try:
        driver.release(vmid, rec["config"], volumes=volumes, log=ctx.log)
    except CorralError:
        pass  # the local definition names the old volumes; adopt rewrites it on use
    driver.adopt(vmid, rec["config"], volumes=volumes, log=ctx.log)
    ctx.log(f"{guests._kind(rec)} {vmid} is a template")


HANDLERS = {"clone": _clone, "template": _template}
for _names in TASK_TYPES.values():
    for _op, _task in _names.items():
        task_handler(_task)(HANDLERS[_op])
