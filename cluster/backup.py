"""vzdump: backups of guests into archives on a storage with `backup` content.

One `vzdump` task per node backs up the node's guests one after the other
(Proxmox's behaviour; the serial key `vzdump:NODE` queues a second run behind
the first, so one node never runs two at once). Each guest is locked
`backup` meanwhile. The archive (corral.cluster.archive has the layout) is
written to a temporary name and renamed when complete: a failed backup
leaves nothing behind.

Modes, as Proxmox's:
- snapshot: the guest keeps running. A CT whose volumes can snapshot is
  frozen for an instant, snapshotted (`vzdump`), and archived from the
  snapshot; a running VM is copied by its driver's live backup job (libvirt
  push backup: copy-before-write, consistent at the job's start). A CT whose
  storage cannot snapshot falls back to suspend mode, with a line in the log.
- suspend: a CT is frozen, a VM paused, for the whole copy.
- stop: the guest is shut down for the copy and started again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

from corral.cluster import (
    archive,
    backup_jobs,
    backup_recovery,
    backup_volumes,
    ct_archive,
    guests,
    keys,
    prune,
    snapshots,
)
from corral.cluster.errors import Conflict, CorralError, ParamError
from corral.cluster.guest_driver import GuestDriver, VolumeAccess
from corral.cluster.tasks import TaskContext, task_handler

TEMP_SNAP = "vzdump"
MODES = ("snapshot", "suspend", "stop")
STOP_TIMEOUT = 600


def notes(template: str | None, rec: dict[str, Any], node: str, cluster: str = "") -> str:
    """Proxmox's notes-template: {{guestname}}, {{node}}, {{vmid}}, {{cluster}}."""
    if not template:
        return ""
    cfg = rec["config"]
    name = str(cfg.get("hostname") or cfg.get("name") or rec["vmid"])
    out = template
    for key, value in (("guestname", name), ("node", node), ("vmid", str(rec["vmid"])),
                       ("cluster", cluster)):  # fmt: skip
        out = out.replace("{{" + key + "}}", value)
    return out.replace("\\n", "\n")


def _disk_member(
    ctx: TaskContext, sink: archive.Sink, key: str, path: str,
    extents: list[tuple[int, int]] | None = None,
) -> None:  # fmt: skip
    size, stored = archive.sparse_member(sink, f"disk-drive-{key}.raw", path, extents)
    ctx.log(f"'{key}': {size} bytes, {stored} of them stored (zeros are holes)")


def _raw_file(volumes: VolumeAccess, volid: str) -> str | None:
    """The local raw image file of `volid`, if it is one (dir, btrfs): a stopped or
    paused guest's image is read in place instead of exported."""
    try:
        disk = volumes.qemu_disk(volid)
    except CorralError:
        return None
    path = disk.get("path")
    if disk.get("kind") != "file" or disk.get("format") != "raw" or not path:
        return None
    if not os.path.isfile(path) or os.path.getsize(path) != int(volumes.size(volid)):
        return None
    return str(path)


def _spool_volume(volumes: VolumeAccess, volid: str, path: str) -> list[tuple[int, int]]:
    """Export `volid` as raw into a sparse file at `path`; its data extents."""
    spool = archive.SparseSpool(path)
    try:
        volumes.export(volid, fmt="raw", out=spool)  # type: ignore[arg-type]
    finally:
        spool.close()
    expected = int(volumes.size(volid))
    if spool.pos != expected:
        raise CorralError(f"{volid}: exported {spool.pos} bytes, expected {expected}")
    return spool.extents


def _backup_ct(
    ctx: TaskContext, rec: dict[str, Any], driver: GuestDriver, volumes: VolumeAccess,
    sink: archive.Sink, mode: str, running: bool,
) -> None:  # fmt: skip
    vmid, config = rec["vmid"], rec["config"]
    vols = snapshots.snapshot_volumes(driver, config)
    paths, excluded = ct_archive.plan(ct_archive.mount_points(config))
    paths = {key: path for key, path in paths.items() if key in vols}
    for key, why in sorted(excluded.items()):
        ctx.log(f"excluding mount point {key} ('{config.get(key)}') from backup ({why})")
    for key in sorted(paths):
        if key != "rootfs":
            ctx.log(f"including mount point {key} ('/{paths[key]}') in backup")
    sink.write(archive.small_member(archive.CT_CONF, archive.config_text(config).encode()))
    if (
        mode == "snapshot"
        and running
        and not all(volumes.has_feature(vols[key], "snapshot") for key in paths)
    ):
        ctx.log("mode failure - some volumes do not support snapshots, falling back to suspend")
        mode = "suspend"
    if mode == "snapshot" and running:
        taken: list[str] = []
        try:
            for key in paths:
                try:
                    volumes.snapshot_delete(vols[key], TEMP_SNAP)  # left by a crashed run
                except CorralError:
                    pass
            frozen = driver.freeze(vmid, config, log=ctx.log)
            try:
                for key in paths:
                    volumes.snapshot(vols[key], TEMP_SNAP)
                    taken.append(vols[key])
            finally:
                if frozen:
                    driver.thaw(vmid, config, log=ctx.log)
            for key, path in paths.items():
                ctx.check_abort()
                ctx.log(f"creating archive from snapshot '{TEMP_SNAP}' of {vols[key]}")
                _add_volume(sink, volumes, vols[key], path, alone=len(paths) == 1, snap=TEMP_SNAP)
        finally:
            for volid in taken:
                volumes.snapshot_delete(volid, TEMP_SNAP)
    else:
        frozen = running and mode == "suspend" and driver.freeze(vmid, config, log=ctx.log)
        try:
            for key, path in paths.items():
                ctx.check_abort()
                ctx.log(f"creating archive from {vols[key]}")
                _add_volume(sink, volumes, vols[key], path, alone=len(paths) == 1)
        finally:
            if frozen:
                driver.thaw(vmid, config, log=ctx.log)
    if len(paths) > 1:
        sink.write(archive.END)  # else the root's own tar stream ended the archive


def _add_volume(
    sink: archive.Sink, volumes: VolumeAccess, volid: str, path: str, *, alone: bool,
    snap: str | None = None,
) -> None:  # fmt: skip
    if alone:  # the root only (no mount point backed up): its tar stream as it comes
        volumes.export(volid, fmt="tar", out=sink, snap=snap)  # type: ignore[arg-type]
    else:
        ct_archive.append_volume(sink, volumes, volid, path, snap=snap)


def _backup_vm(
    ctx: TaskContext, rec: dict[str, Any], driver: GuestDriver, volumes: VolumeAccess,
    sink: archive.Sink, mode: str, running: bool, workdir: str,
) -> None:  # fmt: skip
    vmid, config = rec["vmid"], rec["config"]
    disks = snapshots.snapshot_volumes(driver, config)
    for vol in backup_volumes.volumes(driver, "qemu", config):
        if not vol["included"]:
            ctx.log(f"exclude disk '{vol['id']}' '{vol['name']}' (backup=no)")
            disks.pop(vol["id"], None)
    sink.write(archive.small_member(archive.VM_CONF, archive.config_text(config).encode()))
    if running and mode == "snapshot":
        files = driver.backup_live(vmid, config, disks, workdir, log=ctx.log)
        for key in sorted(disks):
            ctx.log(f"adding '{key}' ({disks[key]}) from the backup job's copy")
            _disk_member(ctx, sink, key, files[key])
            os.unlink(files[key])
    else:
        paused = running and mode == "suspend"
        if paused:
            driver.suspend(vmid, config, log=ctx.log)
        try:
            for key, volid in sorted(disks.items()):
                ctx.check_abort()
                ctx.log(f"adding '{key}' ({volid})")
                image = _raw_file(volumes, volid)
                if image is not None:  # read in place, its holes found by SEEK_DATA
                    _disk_member(ctx, sink, key, image, archive.scan_extents(image, zeros=False))
                    continue
                spool = os.path.join(workdir, f"{key}.raw")
                extents = _spool_volume(volumes, volid, spool)
                _disk_member(ctx, sink, key, spool, extents)
                os.unlink(spool)
        finally:
            if paused:
                driver.resume(vmid, config, log=ctx.log)
    sink.write(archive.END)


def backup_guest(ctx: TaskContext, vmid: int, opts: dict[str, Any]) -> str:
    """Back up one guest of this node; returns the archive's volume ID."""
    rec = guests._record(ctx, {"vmid": vmid})
    driver, volumes = guests._driver(ctx, rec["type"]), guests._volumes(ctx)
    storage, mode = opts["storage"], opts.get("mode") or "snapshot"
    compress = opts.get("compress") or "zstd"
    if rec["config"].get("template") and rec["type"] == "lxc":
        mode = "stop"  # a template never runs
    name = archive.archive_name(rec["type"], vmid, time.time(), compress)
    volid = f"{storage}:backup/{name}"
    path = volumes.file_path(volid)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    running = driver.status(vmid, rec["config"]).get("status") in ("running", "paused")
    ctx.log(f"Starting Backup of {guests._kind(rec)} {vmid} ({rec['type']}), mode {mode}")
    snapshots._lock(ctx, vmid, "backup")
    stopped = False
    tmp = f"{path}.tmp"
    workdir = tempfile.mkdtemp(prefix=f".vzdump-{vmid}-", dir=os.path.dirname(path))
    started = time.monotonic()
    try:
        if running and mode == "stop":
            ctx.log(f"stopping {guests._kind(rec)} {vmid} for the backup")
            driver.shutdown(vmid, rec["config"], timeout=STOP_TIMEOUT, force_stop=True,
                            log=ctx.log)  # fmt: skip
            stopped, running = True, False
        with open(tmp, "wb") as out:
            sink = archive.Sink(out, compress=compress, bwlimit=int(opts.get("bwlimit") or 0))
            try:
                if rec["type"] == "lxc":
                    _backup_ct(ctx, rec, driver, volumes, sink, mode, running)
                else:
                    _backup_vm(ctx, rec, driver, volumes, sink, mode, running, workdir)
                sink.finish()
            except BaseException:
                sink.abort()
                raise
        os.replace(tmp, path)
        raw = sink.bytes
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        snapshots._unlock(ctx, vmid, "backup")
        if stopped:
            ctx.log(f"starting {guests._kind(rec)} {vmid} again")
            driver.start(vmid, rec["config"], volumes=volumes, log=ctx.log)
    took = max(time.monotonic() - started, 1e-3)
    size = os.path.getsize(path)
    ctx.log(
        f"archive {volid}: {size} bytes ({raw} uncompressed) in {took:.1f} s "
        f"({raw / took / (1 << 20):.1f} MiB/s)"
    )
    text = notes(opts.get("notes-template"), rec, ctx.node)
    if text or opts.get("protected"):
        attrs: dict[str, Any] = {}
        if text:
            attrs["notes"] = text
        if opts.get("protected"):
            attrs["protected"] = 1
        ctx.store.put(keys.volume_attrs(volid), attrs)
    return volid


def _vzdump(ctx: TaskContext, args: dict[str, Any]) -> None:
    opts = dict(args.get("opts") or {})
    volumes = guests._volumes(ctx)
    if "backup" not in volumes.content_of(opts["storage"]):
        raise ParamError.one("storage", f"storage '{opts['storage']}' does not hold backups")
    failed = []
    for done, vmid in enumerate(args["vmids"]):
        ctx.check_abort()
        ctx.progress(done / len(args["vmids"]))
        try:
            backup_guest(ctx, vmid, opts)
            ctx.log(f"Finished Backup of VM {vmid}")
            keep = prune.for_storage(ctx.store, opts["storage"], opts.get("prune-backups"))
            if keep and int(opts.get("remove", 1)):
                rec = ctx.store.get_value(keys.guest(vmid)) or {}
                backup_jobs.prune_group(ctx.store, volumes, opts["storage"], vmid,
                                        rec.get("type"), keep, dry_run=False,
                                        log_fn=ctx.log)  # fmt: skip
        except (CorralError, OSError, Conflict) as err:
            ctx.log(f"ERROR: Backup of VM {vmid} failed - {err}")
            failed.append(vmid)
        # What a restart that interrupts this run must not do again (backup_recovery).
        ctx.worker.set_fields(ctx.record, done=list(args["vmids"][: done + 1]))
    if failed:
        raise CorralError(f"job errors: backup of {', '.join(map(str, failed))} failed")


task_handler("vzdump")(_vzdump)
backup_recovery.register()
