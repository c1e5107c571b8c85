"""Restore a guest from a backup archive (corral.cluster.archive's layout).

`POST /nodes/{node}/lxc` with `ostemplate=ARCHIVE restore=1`, `POST
/nodes/{node}/qemu` with `archive=ARCHIVE`: the API claims the VMID (or,
with `force=1`, locks the existing stopped guest) and queues a `vzrestore` /
`qmrestore` task on the target node, which

1. reads the guest config from the archive's first member,
2. streams each volume out of the archive into a new volume of the VMID, on
   `storage` if given or else on the storage it came from,
3. writes the config back with the new volume IDs (`unique=1`: fresh MACs
   and machine IDs; config keys given in the request override the archive's),
4. with `force=1` frees the volumes of the guest it replaces, and starts the
   guest if asked.

Every volume made is freed again if a step fails; a claimed record goes, a
replaced guest stays as it was.
"""

from __future__ import annotations

import tarfile
from typing import Any

from corral.cluster import archive, clones, ct_archive, guests, keys, schema, snapshots
from corral.cluster.errors import CorralError, ParamError
from corral.cluster.guest_driver import GuestDriver
from corral.cluster.tasks import TaskContext, task_handler
from corral.cluster.undo import Reverter

TASK_TYPES = {"lxc": "vzrestore", "qemu": "qmrestore"}
_DROP = ("template", "parent", "lock", "digest")


def _known(driver: GuestDriver, config: dict[str, Any], log: Any) -> dict[str, Any]:
    props = driver.config_schema().props
    out = {}
    for key, value in config.items():
        if key in _DROP:
            continue
        if key not in props:
            log(f"ignoring unknown config key '{key}' from the archive")
            continue
        out[key] = value
    return driver.config_schema().validate(out, partial=True)


def _restore_ct(
    ctx: TaskContext,
    driver: GuestDriver,
    vmid: int,
    path: str,
    config: dict[str, Any],
    storage: str | None,
    undo: Reverter,
) -> dict[str, Any]:
    volumes = guests._volumes(ctx)
    vols = driver.volumes_of(config)
    if "rootfs" not in vols:
        raise ParamError.one("ostemplate", "the archive's config has no rootfs")
    mps = ct_archive.mount_points(config)
    paths, excluded = ct_archive.plan(mps)
    mapping: dict[str, str] = {}
    for key, mpath in paths.items():
        ctx.check_abort()
        target = storage or vols[key].partition(":")[0]
        where = "the root filesystem" if key == "rootfs" else f"{key} (/{mpath})"
        ctx.log(f"restoring {where} onto storage '{target}'")
        if len(paths) == 1:  # the root only: the archive's tar stream as it is
            stream, proc = archive.open_archive(path)
        else:
            stream, proc = ct_archive.volume_stream(path, key, paths), None
        try:
            new = volumes.import_(target, stream=stream, fmt="tar", content="rootdir", vmid=vmid)
        finally:
            archive.close_archive(stream, proc)
        undo.add(lambda v=new: volumes.free(v))  # type: ignore[misc]
        mapping[vols[key]] = new
        ctx.log(f"{key} is now {new}")
    for key, why in sorted(excluded.items()):
        if key not in vols or not ct_archive.is_volume(vols[key]):
            ctx.log(f"{key} ({config[key]}) is a {why}: kept as it is")
            continue
        # Proxmox makes a left-out volume mount point again, empty.
        target = storage or vols[key].partition(":")[0]
        size = schema.parse_size(mps[key].get("size") or "0")
        new = volumes.alloc(target, vmid, size=size, content="rootdir")
        undo.add(lambda v=new: volumes.free(v))  # type: ignore[misc]
        mapping[vols[key]] = new
        ctx.log(f"{key} was not in the backup ({why}): made again, empty, as {new}")
    return clones.replace_volumes(driver, config, mapping)


def _restore_vm(
    ctx: TaskContext,
    driver: GuestDriver,
    vmid: int,
    path: str,
    config: dict[str, Any],
    storage: str | None,
    undo: Reverter,
) -> dict[str, Any]:
    volumes = guests._volumes(ctx)
    vols = snapshots.snapshot_volumes(driver, config)
    mapping: dict[str, str] = {}
    stream, proc = archive.open_archive(path)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                m = archive.DISK_MEMBER.fullmatch(member.name)
                if m is None:
                    continue
                key = m.group(1)
                if key not in vols:
                    raise ParamError.one("archive", f"disk '{key}' is not in the archive's config")
                ctx.check_abort()
                target = storage or vols[key].partition(":")[0]
                fh = tar.extractfile(member)
                assert fh is not None
                ctx.log(f"restoring '{key}' ({member.size} bytes) onto storage '{target}'")
                new = volumes.import_(target, stream=fh, fmt="raw", content="images",
                                      vmid=vmid, size=member.size)  # fmt: skip
                undo.add(lambda v=new: volumes.free(v))  # type: ignore[misc]
                mapping[vols[key]] = new
                ctx.log(f"'{key}' is now {new}")
    except tarfile.TarError as err:
        raise ParamError.one("archive", f"damaged archive: {err}") from None
    finally:
        archive.close_archive(stream, proc)
    for key, volid in vols.items():
        if volid not in mapping:
            ctx.log(f"{key} ({volid}) is not in the archive: left out of the config")
            config.pop(key, None)
    return clones.replace_volumes(driver, config, mapping)


def _restore(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid, volid = args["vmid"], args["archive"]
    rec = guests._record(ctx, args)
    driver, volumes = guests._driver(ctx, rec["type"]), guests._volumes(ctx)
    replacing = bool(args.get("force")) and rec.get("lock") == "restore"
    old_config = dict(rec["config"])
    path = volumes.file_path(volid)
    ctx.log(f"restoring {volid} to {guests._kind(rec)} {vmid}")
    try:
        config = _known(driver, archive.read_config(path, rec["type"]), ctx.log)
        with Reverter() as undo:
            restore = _restore_ct if rec["type"] == "lxc" else _restore_vm
            config = restore(ctx, driver, vmid, path, config, args.get("storage"), undo)
            if args.get("unique"):
                config = driver.renew_identity(vmid, config)
            overrides = _known(driver, dict(args.get("overrides") or {}), ctx.log)
            config.update(overrides)
            if replacing:
                ctx.log(f"removing the volumes of the {guests._kind(rec)} {vmid} it replaces")
                driver.destroy(vmid, old_config, volumes=volumes, log=ctx.log)
            driver.adopt(vmid, config, volumes=volumes, log=ctx.log)

            def commit(r: dict[str, Any]) -> dict[str, Any]:
                r["config"], r["lock"] = config, None
                r["pending"], r["pending_delete"] = {}, []
                r.pop("snapshots", None)
                r.pop("parent", None)
                return r

            guests.update_record(ctx.store, vmid, commit)
            undo.success()
    except BaseException:
        if replacing:
            guests.set_lock(ctx.store, vmid, None, expect="restore")
        else:
            ctx.store.delete(keys.guest(vmid))
        raise
    ctx.log(f"{guests._kind(rec)} {vmid} restored from {volid}")
    if args.get("start"):
        try:
            driver.start(vmid, config, volumes=volumes, log=ctx.log)
        except CorralError as err:
            raise CorralError(f"restored, but the start failed: {err}") from err
        guests._mark(ctx, rec, "running")


for _task in TASK_TYPES.values():
    task_handler(_task)(_restore)
