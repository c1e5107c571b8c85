"""Guest snapshots, written once for containers and VMs (Proxmox's shared
snapshot flow, PVE::AbstractConfig). Drivers fill in the steps: `freeze` /
`thaw`, `snapshot_volume`, `save_vmstate` / `restore_vmstate`.

A guest's snapshots live in its record beside the config, as Proxmox keeps
`[snapname]` sections in the guest's config file:

    {"config": {...}, "parent": "before-upgrade",
     "snapshots": {"before-upgrade": {"config": {...}, "snaptime": 1733450000,
                   "description": "...", "parent": null, "vmstate": 0}}}

`parent` is the snapshot the current state grew from; each snapshot names
its own parent, which makes the tree `GET .../snapshot` shows. The guest's
`lock` (snapshot, rollback, snapshot-delete) guards each operation, and all
of them run as tasks on the guest's node in its serial queue.

- create: every disk of the guest is snapshotted, or none (the ones done are
  deleted again when one fails); a running guest is frozen meanwhile (a CT's
  processes, a VM's filesystems through the agent), or, with `vmstate=1`, a
  VM's RAM is saved with the disks at one instant.
- rollback: the guest is stopped, each disk goes back to the snapshot, the
  config becomes the snapshot's config (pending changes are dropped), and
  with saved RAM the VM resumes where it was.
- delete: each disk's snapshot goes, then the record's; children move up to
  the deleted snapshot's parent. A failure leaves the snapshot marked
  `snapstate: delete` (unlocked), so deleting again finishes the job.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import Any

from corral.cluster import guests
from corral.cluster.errors import Conflict, CorralError, NotFound, NotSupported, ParamError
from corral.cluster.guest_driver import GuestDriver, VolumeAccess
from corral.cluster.store import Store
from corral.cluster.tasks import TaskContext, task_handler
from corral.cluster.undo import Reverter

TASK_TYPES = {
    "lxc": {"create": "vzsnapshot", "rollback": "vzrollback", "delete": "vzdelsnapshot"},
    "qemu": {"create": "qmsnapshot", "rollback": "qmrollback", "delete": "qmdelsnapshot"},
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,39}")
# Config keys whose volumes are not part of a snapshot (Proxmox skips them too).
_SKIP_KEYS = re.compile(r"unused\d+|kernel|initrd")
_SKIP_CONTENT = ("iso/", "vztmpl/", "snippets/", "backup/")


def check_name(snapname: str) -> str:
    if not _NAME.fullmatch(snapname or "") or snapname == "current":
        raise ParamError.one("snapname", f"invalid snapshot name '{snapname}'")
    return snapname


def snapshot_volumes(driver: GuestDriver, config: dict[str, Any]) -> dict[str, str]:
    """Config key -> volume ID of the disks a snapshot covers (no CD-ROMs, no unused)."""
    out = {}
    for key, volid in driver.volumes_of(config).items():
        volname = volid.partition(":")[2]
        if _SKIP_KEYS.fullmatch(key) or volname.startswith(_SKIP_CONTENT):
            continue
        out[key] = volid
    return out


def require_snapshot_feature(
    driver: GuestDriver, config: dict[str, Any], volumes: VolumeAccess, snap: str | None = None
) -> dict[str, str]:
    """The disks of `config`; NotSupported (501) naming each one that cannot snapshot."""
    vols = snapshot_volumes(driver, config)
    bad = []
    for key, volid in sorted(vols.items()):
        try:
            ok = volumes.has_feature(volid, "snapshot", snap)
        except CorralError as err:
            raise ParamError.one(key, str(err)) from None
        if not ok:
            bad.append(f"{key} ({volid})")
    if bad:
        raise NotSupported(
            what=f"snapshot of {', '.join(bad)}: its storage cannot snapshot this volume"
        )
    return vols


def tree(rec: dict[str, Any], *, running: bool) -> list[dict[str, Any]]:
    """GET .../snapshot: each snapshot with its parent, then `current` ("You are here!")."""
    out = []
    for name, snap in sorted(rec.get("snapshots", {}).items(), key=lambda kv: kv[1]["snaptime"]):
        row: dict[str, Any] = {
            "name": name,
            "description": snap.get("description", ""),
            "snaptime": snap["snaptime"],
        }
        if snap.get("parent"):
            row["parent"] = snap["parent"]
        if rec["type"] == "qemu":
            row["vmstate"] = int(bool(snap.get("vmstate")))
        if snap.get("snapstate"):
            row["snapstate"] = snap["snapstate"]
        out.append(row)
    current: dict[str, Any] = {
        "name": "current",
        "description": "You are here!",
        "running": int(running),
        "digest": guests.digest(rec["config"]),
    }
    if rec.get("parent"):
        current["parent"] = rec["parent"]
    out.append(current)
    return out


def get_snapshot(rec: dict[str, Any], snapname: str) -> dict[str, Any]:
    snap = rec.get("snapshots", {}).get(snapname)
    if snap is None:
        raise NotFound(what=f"snapshot '{snapname}'")
    return dict(snap)


def snapshot_config(rec: dict[str, Any], snapname: str) -> dict[str, Any]:
    """GET .../snapshot/{snapname}/config: the config as it was, with the snapshot's fields."""
    snap = get_snapshot(rec, snapname)
    out = dict(snap["config"])
    out["snaptime"] = snap["snaptime"]
    if snap.get("description"):
        out["description"] = snap["description"]
    if snap.get("parent"):
        out["parent"] = snap["parent"]
    if snap.get("vmstate"):
        out["vmstate"] = 1
    return out


def set_description(store: Store, vmid: int, snapname: str, description: str) -> None:
    def change(rec: dict[str, Any]) -> dict[str, Any]:
        get_snapshot(rec, snapname)
        rec["snapshots"][snapname]["description"] = description
        return rec

    guests.update_record(store, vmid, change)


def check_create(rec: dict[str, Any], snapname: str) -> None:
    """What the API refuses before queueing a snapshot task."""
    check_name(snapname)
    guests.check_lock(rec)
    if snapname in rec.get("snapshots", {}):
        raise Conflict(f"snapshot name '{snapname}' already used")


# -- task handlers (on the guest's node) -------------------------------------------------


def _lock(ctx: TaskContext, vmid: int, lock: str) -> dict[str, Any]:
    def change(rec: dict[str, Any]) -> dict[str, Any]:
        guests.check_lock(rec)
        rec["lock"] = lock
        return rec

    return guests.update_record(ctx.store, vmid, change)


def _unlock(ctx: TaskContext, vmid: int, lock: str) -> None:
    guests.set_lock(ctx.store, vmid, None, expect=lock)


def _is_running(driver: GuestDriver, rec: dict[str, Any]) -> bool:
    return driver.status(rec["vmid"], rec["config"]).get("status") in ("running", "paused")


def forget_states(ctx: TaskContext, vmid: int) -> None:
    """Remove the saved RAM of every snapshot of a destroyed guest."""
    data_dir = ctx.worker.context.get("data_dir")
    if data_dir:
        shutil.rmtree(os.path.join(str(data_dir), "vmstate", str(int(vmid))), ignore_errors=True)


def _state_path(ctx: TaskContext, vmid: int, snapname: str) -> str:
    """Saved RAM of a snapshot: a file of the guest's node (documented in README)."""
    data_dir = str(ctx.worker.context.get("data_dir") or "/var/lib/corral")
    folder = os.path.join(data_dir, "vmstate", str(vmid))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    return os.path.join(folder, f"{snapname}.state")


def _create(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid, snapname = args["vmid"], check_name(args["snapname"])
    rec = guests._record(ctx, args)
    driver, volumes = guests._driver(ctx, rec["type"]), guests._volumes(ctx)
    if snapname in rec.get("snapshots", {}):
        raise Conflict(f"snapshot name '{snapname}' already used")
    config = dict(rec["config"])
    vols = require_snapshot_feature(driver, config, volumes)
    rec = _lock(ctx, vmid, "snapshot")
    try:
        running = _is_running(driver, rec)
        state = None
        if args.get("vmstate") and running:
            state = _state_path(ctx, vmid, snapname)
            ctx.log(f"saving the RAM state of VM {vmid}")
            driver.save_vmstate(vmid, config, state, log=ctx.log)
        try:
            frozen = running and state is None and driver.freeze(vmid, config, log=ctx.log)
            try:
                with Reverter() as undo:
                    for key, volid in sorted(vols.items()):
                        ctx.check_abort()
                        ctx.log(f"snapshotting '{key}' ({volid})")
                        driver.snapshot_volume(
                            vmid, config, volid, snapname, op="create",
                            running=running and state is None, volumes=volumes, log=ctx.log,
                        )  # fmt: skip
                        undo.add(
                            lambda v=volid: driver.snapshot_volume(  # type: ignore[misc]
                                vmid,
                                config,
                                v,
                                snapname,
                                op="delete",
                                running=running and state is None,
                                volumes=volumes,
                                log=ctx.log,
                            )  # fmt: skip
                        )
                    undo.success()
            finally:
                if frozen:
                    driver.thaw(vmid, config, log=ctx.log)
        except BaseException:
            if state is not None:
                os.unlink(state)
            raise
        finally:
            if state is not None and os.path.exists(state):
                driver.restore_vmstate(vmid, config, state, volumes=volumes, log=ctx.log)
    except BaseException:
        _unlock(ctx, vmid, "snapshot")
        raise

    def commit(r: dict[str, Any]) -> dict[str, Any]:
        r.setdefault("snapshots", {})[snapname] = {
            "config": config,
            "snaptime": int(time.time()),
            "description": str(args.get("description") or ""),
            "parent": r.get("parent"),
            "vmstate": int(state is not None),
        }
        r["parent"], r["lock"] = snapname, None
        return r

    guests.update_record(ctx.store, vmid, commit)
    ctx.log(f"snapshot '{snapname}' of {guests._kind(rec)} {vmid} created")


def _next_unused(config: dict[str, Any]) -> str:
    n = 0
    while f"unused{n}" in config:
        n += 1
    return f"unused{n}"


def _rollback(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid, snapname = args["vmid"], args["snapname"]
    rec = guests._record(ctx, args)
    driver, volumes = guests._driver(ctx, rec["type"]), guests._volumes(ctx)
    snap = get_snapshot(rec, snapname)
    if snap.get("snapstate"):
        raise Conflict(f"snapshot '{snapname}' is being deleted")
    vols = require_snapshot_feature(driver, snap["config"], volumes, snap=snapname)
    rec = _lock(ctx, vmid, "rollback")
    kind = guests._kind(rec)
    try:
        if _is_running(driver, rec):
            ctx.log(f"stopping {kind} {vmid} for the rollback")
            driver.stop(vmid, rec["config"], log=ctx.log)
        for key, volid in sorted(vols.items()):
            ctx.check_abort()
            ctx.log(f"rolling back '{key}' ({volid}) to '{snapname}'")
            volumes.snapshot_rollback(volid, snapname)
    except BaseException:
        _unlock(ctx, vmid, "rollback")
        raise

    def commit(r: dict[str, Any]) -> dict[str, Any]:
        config = dict(snap["config"])
        # Disks added after the snapshot stay the guest's, as unused volumes.
        kept = set(driver.volumes_of(config).values())
        for volid in driver.volumes_of(r["config"]).values():
            if volid not in kept and volid in snapshot_volumes(driver, r["config"]).values():
                config[_next_unused(config)] = volid
        r["config"], r["pending"], r["pending_delete"] = config, {}, []
        r["parent"], r["lock"] = snapname, None
        return r

    rec = guests.update_record(ctx.store, vmid, commit)
    driver.adopt(vmid, rec["config"], volumes=volumes, log=ctx.log)
    ctx.log(f"{kind} {vmid} rolled back to '{snapname}'")
    state = _state_path(ctx, vmid, snapname) if snap.get("vmstate") else None
    if state is not None and os.path.exists(state):
        driver.restore_vmstate(vmid, rec["config"], state, volumes=volumes, log=ctx.log)
    elif args.get("start"):
        driver.start(vmid, rec["config"], volumes=volumes, log=ctx.log)
    guests._mark(ctx, rec, "rollback")


def _delete(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid, snapname, force = args["vmid"], args["snapname"], bool(args.get("force"))
    rec = guests._record(ctx, args)
    driver, volumes = guests._driver(ctx, rec["type"]), guests._volumes(ctx)
    snap = get_snapshot(rec, snapname)
    vols = snapshot_volumes(driver, snap["config"])
    rec = _lock(ctx, vmid, "snapshot-delete")

    def mark(r: dict[str, Any]) -> dict[str, Any]:
        r["snapshots"][snapname]["snapstate"] = "delete"
        return r

    try:
        guests.update_record(ctx.store, vmid, mark)
        running = _is_running(driver, rec)
        for key, volid in sorted(vols.items()):
            ctx.check_abort()
            try:
                driver.snapshot_volume(
                    vmid, rec["config"], volid, snapname, op="delete",
                    running=running, volumes=volumes, log=ctx.log,
                )  # fmt: skip
                ctx.log(f"deleted snapshot '{snapname}' of '{key}' ({volid})")
            except NotFound:
                ctx.log(f"'{key}' ({volid}) has no snapshot '{snapname}' (any more)")
            except CorralError as err:
                if not force:
                    raise
                ctx.log(f"WARNING: '{key}' ({volid}): {err} (removed from the config anyway)")
        if snap.get("vmstate"):
            try:
                os.unlink(_state_path(ctx, vmid, snapname))
            except FileNotFoundError:
                pass
    except BaseException:
        _unlock(ctx, vmid, "snapshot-delete")
        raise

    def commit(r: dict[str, Any]) -> dict[str, Any]:
        gone = r["snapshots"].pop(snapname)
        for other in r["snapshots"].values():
            if other.get("parent") == snapname:
                other["parent"] = gone.get("parent")
        if r.get("parent") == snapname:
            r["parent"] = gone.get("parent")
        r["lock"] = None
        return r

    guests.update_record(ctx.store, vmid, commit)
    ctx.log(f"snapshot '{snapname}' of {guests._kind(rec)} {vmid} deleted")


HANDLERS = {"create": _create, "rollback": _rollback, "delete": _delete}
for _names in TASK_TYPES.values():
    for _op, _task in _names.items():
        task_handler(_task)(HANDLERS[_op])
