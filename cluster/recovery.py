"""What a node does at its restart for guest tasks it was running when it died.

`TaskWorker.start` ends such a task as "interrupted by node restart" (Proxmox
says "unexpected status"); first it runs the recovery registered here for the
task's type, so nothing stays half-made and no lock stays stuck:

- create (also one aborted while queued): the guest never existed for its
  user. Its half-made local definition and the volumes allocated for it (found
  by owner on the storages its config names) are removed, then its record
  (locked "create").
- destroy: the user asked for it gone (and did not abort), and the record says
  "destroyed": the destroy is finished (drivers' destroy is idempotent).
- migrate: the guest has not moved (the record still names this node): it
  stays here, unlocked, and the copies of its local volumes already made on
  the target (listed in the task's record as they are made) are removed there;
  the status loop reports whether it runs. Had it moved (the hand-over was
  written), its source volumes that were copied are freed here instead.

Start, stop and the other power tasks need nothing: the driver's state is the
truth and the status loop publishes it.
"""

from __future__ import annotations

import logging
from typing import Any

from corral.cluster import keys, volume_moves
from corral.cluster.errors import CorralError, NotFound
from corral.cluster.guests import (
    TASK_TYPES,
    _destroy,
    _driver,
    _forget_status,
    _volumes,
    set_lock,
)
from corral.cluster.tasks import TaskContext, task_recovery

log = logging.getLogger(__name__)


def _own_record(ctx: TaskContext, args: dict[str, Any], lock: str) -> dict[str, Any] | None:
    rec = ctx.store.get_value(keys.guest(int(args["vmid"])))
    if rec is None or rec.get("node") != ctx.node or rec.get("lock") != lock:
        return None
    return rec


def _storages_named(config: dict[str, Any], known: dict[str, Any]) -> set[str]:
    """Storage IDs the config's volume-like values name ("local:1", "local:vm-1-disk-0")."""
    out = set()
    for value in config.values():
        if isinstance(value, str) and ":" in value:
            storage = value.split(",", 1)[0].partition(":")[0]
            if storage in known:
                out.add(storage)
    return out


def recover_create(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid = int(args["vmid"])
    rec = _own_record(ctx, args, "create")
    if rec is None:
        return
    kind = "CT" if rec["type"] == "lxc" else "VM"
    volumes = _volumes(ctx)
    driver = _driver(ctx, rec["type"])
    try:
        # The record's config still holds the requested sizes ("local:1"), so the
        # driver removes only what is not a volume (lxc dir, libvirt domain, links).
        driver.destroy(vmid, rec["config"], volumes=volumes, log=ctx.log)
    except CorralError as err:
        ctx.log(f"could not remove the half-made {kind} {vmid}: {err}")
        raise
    for storage in sorted(_storages_named(rec["config"], volumes.configs())):
        for row in volumes.list_volumes(storage, vmid=vmid):
            if row.get("content") not in ("images", "rootdir"):
                continue  # backups of an earlier guest with this ID are not the create's
            volid = row["volid"]
            try:
                volumes.unmount_rootdir(volid)
            except CorralError:
                pass  # not mounted
            volumes.free(volid)
            ctx.log(f"freed {volid}, allocated by the interrupted create")
    ctx.store.delete(keys.guest(vmid))
    _forget_status(ctx, vmid)
    ctx.log(f"{kind} {vmid} was not created: its half-made parts are removed")


def recover_destroy(ctx: TaskContext, args: dict[str, Any]) -> None:
    if ctx.record.get("abort") or _own_record(ctx, args, "destroyed") is None:
        return
    ctx.log("finishing the interrupted destroy")
    _destroy(ctx, args)


def recover_migrate(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid, target = int(args["vmid"]), str(args.get("target") or "")
    copies: dict[str, str] = dict(ctx.record.get("copies") or {})  # source -> target copy
    rec = ctx.store.get_value(keys.guest(vmid))
    if copies and rec is not None and rec.get("node") == target:
        _free_moved_sources(ctx, copies)
        return
    if _own_record(ctx, args, "migrate") is None:
        return
    data_dir = str(ctx.worker.context.get("data_dir") or "")
    for new in sorted(copies.values()):
        volume_moves.remove_remote(ctx.store, data_dir, target, new, log=ctx.log)
    set_lock(ctx.store, vmid, None, expect="migrate")
    _forget_status(ctx, int(args["vmid"]))
    ctx.log(f"guest {args['vmid']} stays on node '{ctx.node}', unlocked")


def _free_moved_sources(ctx: TaskContext, copies: dict[str, str]) -> None:
    """The guest moved before the kill: the volumes it was copied from are leftovers."""
    volumes = _volumes(ctx)
    for old in sorted(copies):  # on this node's own storage, as the migration does
        try:
            volumes.free(old)
            ctx.log(f"removed the source volume {old}: the guest runs from {copies[old]}")
        except NotFound:
            pass  # the migration had freed it before the node died
        except CorralError as err:
            ctx.log(f"WARNING: could not remove the source volume {old}: {err}")


for _names in TASK_TYPES.values():
    task_recovery(_names["create"])(recover_create)
    task_recovery(_names["destroy"])(recover_destroy)
    task_recovery(_names["migrate"])(recover_migrate)
