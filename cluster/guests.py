"""The guest flow written once for containers and VMs.

A guest's record lives at guests/{vmid}:

    {"vmid": 105, "type": "lxc", "node": "node1", "config": {...},
     "pending": {...}, "pending_delete": [...], "lock": null, "created": ...}

The API validates, records intent and submits a task to the guest's node;
the handlers below run there and call the node's driver. Every change to a
record is a compare-and-swap on its revision, so concurrent edits never
overwrite each other; `digest` (SHA-1 of the current config, as Proxmox's)
lets clients detect that a config changed under them. All tasks of one guest
share the serial key `vm:{vmid}` and run in submission order.

Config changes to a running guest become pending; the driver applies what it
can live (`apply_live`) and the rest is applied at the next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from corral.cluster import keys, migration, volume_moves
from corral.cluster.clock import REAL
from corral.cluster.cluster_view import local_kv, local_value
from corral.cluster.errors import Conflict, CorralError, NotFound, ParamError, Unavailable
from corral.cluster.guest_driver import GuestDriver
from corral.cluster.guest_status import (  # noqa: F401 - re-exported: the flow's live status
    GoneAtEnd,
    StatusAtEnd,
    live_status,
    local_guests,
    node_live,
    publish_status_for,
    status_hook,
)
from corral.cluster.store_api import StoreAPI
from corral.cluster.tasks import TaskContext, task_handler

log = logging.getLogger(__name__)

# Proxmox task type names per guest type.
TASK_TYPES = {
    "lxc": {
        "create": "vzcreate",
        "start": "vzstart",
        "stop": "vzstop",
        "shutdown": "vzshutdown",
        "reboot": "vzreboot",
        "suspend": "vzsuspend",
        "resume": "vzresume",
        "destroy": "vzdestroy",
        "config": "vzconfig",
        "resize": "resize",
        "migrate": "vzmigrate",
    },
    "qemu": {
        "create": "qmcreate",
        "start": "qmstart",
        "stop": "qmstop",
        "shutdown": "qmshutdown",
        "reboot": "qmreboot",
        "suspend": "qmsuspend",
        "resume": "qmresume",
        "reset": "qmreset",
        "destroy": "qmdestroy",
        "config": "qmconfig",
        "resize": "resize",
        "migrate": "qmigrate",
    },
}
# Parameters of a create call that are not config keys.
CREATE_ONLY = frozenset(
    {
        "vmid",
        "start",
        "pool",
        "storage",
        "unique",
        "force",
        "restore",
        "ostemplate",
        "password",
        "ssh-public-keys",
        "archive",
        "live-restore",
    }
)


def digest(config: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()


def serial(vmid: int) -> str:
    return f"vm:{vmid}"


def get_record(
    store: StoreAPI, vmid: int, *, type: str | None = None, node: str | None = None
) -> dict[str, Any]:
    rec = store.get_value(keys.guest(vmid))
    if rec is None or (type is not None and rec["type"] != type):
        kind = {"lxc": "CT", "qemu": "VM"}.get(type or "", "guest")
        raise NotFound(
            f"Configuration file 'nodes/{node or '?'}/{type or 'guest'}/{vmid}.conf' does not exist"
            if node
            else f"{kind} {vmid} does not exist"
        )
    if node is not None and rec["node"] != node:
        raise NotFound(
            f"Configuration file 'nodes/{node}/{rec['type']}/{vmid}.conf' does not "
            f"exist (the guest is on node '{rec['node']}')"
        )
    return rec


def new_record(
    type: str, vmid: int, node: str, config: dict[str, Any], *, lock: str = "create",
    now: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A fresh guest record, locked (`create`) until its task has built the guest."""
    return {
        "vmid": vmid,
        "type": type,
        "node": node,
        "config": config,
        "pending": {},
        "pending_delete": [],
        "lock": lock,
        "created": int(REAL.time() if now is None else now),
    }


def claim(store: StoreAPI, record: dict[str, Any], *, user: str) -> None:
    """Put a new guest record for `record["vmid"]` if the VMID is free, or
    reserved by `user` (nextid): one create-if-absent transaction that also
    drops the reservation. Conflict if the VMID is taken or reserved by another."""
    vmid = record["vmid"]
    reservation = store.get(keys.vmid_reservation(vmid))
    compare: list[tuple[Any, ...]] = [("version", keys.guest(vmid), "==", 0)]
    if reservation is None:
        compare.append(("version", keys.vmid_reservation(vmid), "==", 0))
    elif reservation.value.get("user") != user:
        raise Conflict(f"VM {vmid} is reserved by {reservation.value.get('user')}")
    else:
        compare.append(("mod", keys.vmid_reservation(vmid), "==", reservation.mod_revision))
    ok = store.txn(
        compare, [("put", keys.guest(vmid), record), ("delete", keys.vmid_reservation(vmid))]
    )
    if not ok:
        kind = {"lxc": "CT", "qemu": "VM"}.get(record.get("type", ""), "VM")
        raise Conflict(f"{kind} {vmid} already exists" if store.get(keys.guest(vmid)) else
                       f"VM {vmid} is reserved")  # fmt: skip


def update_record(
    store: StoreAPI,
    vmid: int,
    fn: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    services: MutableMapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Change the guest's record with `fn` (compare-and-swap, retried). With the
    node's `services`, the first attempt starts from its view's copy: a task's write
    to its own guest then costs no etcd read."""

    def change(rec: Any) -> Any:
        if rec is None:
            raise NotFound(f"guest {vmid} does not exist")
        return fn(rec)

    known = local_kv(services, store, keys.guest(vmid)) if services is not None else None
    return store.update(keys.guest(vmid), change, known=known)


def merged_config(rec: dict[str, Any]) -> dict[str, Any]:
    """The config with pending changes applied (what the guest gets at next start)."""
    out = {**rec["config"], **rec.get("pending", {})}
    for key in rec.get("pending_delete", []):
        out.pop(key, None)
    return out


def check_lock(rec: dict[str, Any], *, allow: tuple[str, ...] = ()) -> None:
    lock = rec.get("lock")
    if lock and lock not in allow:
        kind = "CT" if rec["type"] == "lxc" else "VM"
        raise Conflict(f"{kind} {rec['vmid']} is locked ({lock})")


def check_destroyable(rec: dict[str, Any], *, allow: tuple[str, ...] = ()) -> None:
    """Refuse a destroy of a locked or protected guest (the API asks from its view;
    the task asks again of the record it reads)."""
    check_lock(rec, allow=allow)
    if rec["config"].get("protection"):
        kind = "CT" if rec["type"] == "lxc" else "VM"
        raise Conflict(f"can't remove {kind} {rec['vmid']} - protection mode enabled")


def set_lock(
    store: StoreAPI,
    vmid: int,
    lock: str | None,
    *,
    expect: str | None = None,
    services: MutableMapping[str, Any] | None = None,
) -> None:
    def change(rec: dict[str, Any]) -> dict[str, Any]:
        if lock is not None and rec.get("lock") not in (None, expect):
            check_lock(rec)
        rec["lock"] = lock
        return rec

    update_record(store, vmid, change, services=services)


# -- helpers for handlers -------------------------------------------------------


def _driver(ctx: TaskContext, type: str) -> GuestDriver:
    drivers = ctx.worker.context.get("drivers") or {}
    driver = drivers.get(type)
    if driver is None:
        raise Unavailable(f"{type} guests are not available on node '{ctx.node}'")
    return driver


def _volumes(ctx: TaskContext) -> Any:
    volumes = ctx.worker.context.get("volumes")
    if volumes is None:
        raise Unavailable(f"storage is not available on node '{ctx.node}'")
    return volumes


def _record(ctx: TaskContext, args: dict[str, Any]) -> dict[str, Any]:
    # From the node's in-memory view once it holds this process's writes, the task's
    # own record (or claim) among them: as fresh as a read when the task began. A
    # missing or moved guest is confirmed on the store itself.
    rec = local_value(ctx.worker.context, ctx.store, keys.guest(args["vmid"]))
    if rec is None or rec.get("node") != ctx.node:
        rec = get_record(ctx.store, args["vmid"])
    if rec["node"] != ctx.node:
        raise Conflict(f"guest {args['vmid']} moved to node '{rec['node']}'")
    return rec


def _apply_pending(
    ctx: TaskContext, vmid: int, rec: dict[str, Any] | None = None
) -> dict[str, Any]:
    if rec is not None and not rec.get("pending") and not rec.get("pending_delete"):
        return rec  # nothing pending: no write on the start path
    ctx.recorded()  # a start begins before its record has landed (Tasks.submit)

    def apply(rec: dict[str, Any]) -> dict[str, Any]:
        rec["config"] = merged_config(rec)
        rec["pending"], rec["pending_delete"] = {}, []
        return rec

    return update_record(ctx.store, vmid, apply)


def _durable(ctx: TaskContext, write: Callable[[], Any], seconds: float = 30.0) -> Any:
    """A record write that states what the driver has just done. etcd restarting
    (it is supervised: seconds) must not leave the guest half-recorded — built
    but locked "create" for ever — so it is retried as the task's own end is."""
    deadline = ctx.clock.monotonic() + seconds
    while True:
        try:
            return write()
        except Unavailable:
            if ctx.worker.stopped or ctx.clock.monotonic() > deadline:
                raise
            ctx.clock.sleep(0.5)


def _kind(rec: dict[str, Any]) -> str:
    return "CT" if rec["type"] == "lxc" else "VM"


# -- task handlers ------------------------------------------------------------------


def _create(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmid = args["vmid"]
    # Read through an etcd restart too: failing here would leave the record locked.
    rec = _durable(ctx, lambda: _record(ctx, args))
    driver = _driver(ctx, rec["type"])
    try:
        config = driver.create(
            vmid,
            dict(rec["config"]),
            volumes=_volumes(ctx),
            log=ctx.log,
            params=args.get("params", {}),
        )
    except BaseException:
        # The driver has undone its own steps; the record must go too.
        _durable(ctx, lambda: ctx.store.delete(keys.guest(vmid)))
        raise

    def done(r: dict[str, Any]) -> dict[str, Any]:
        r["config"], r["lock"] = config, None
        return r

    rec = _durable(ctx, lambda: update_record(ctx.store, vmid, done, services=ctx.worker.context))
    ctx.log(f"{_kind(rec)} {vmid} created")
    if args.get("start"):
        _start(ctx, {"vmid": vmid})
    else:
        # Listed "stopped" once the task is OK, as by Proxmox, not "unknown"
        # until the node's next 2 s round finds the new guest.
        _mark(ctx, rec, "stopped", current=True)


def _start(ctx: TaskContext, args: dict[str, Any]) -> None:
    rec = _record(ctx, args)
    check_lock(rec)
    driver = _driver(ctx, rec["type"])
    # No status measurement first: the driver's start raises Conflict if it runs.
    rec = _apply_pending(ctx, rec["vmid"], rec)
    # It may have just moved here: the driver writes its local definition.
    driver.adopt(rec["vmid"], rec["config"], volumes=_volumes(ctx), log=ctx.log)
    driver.start(rec["vmid"], rec["config"], volumes=_volumes(ctx), log=ctx.log, ready=ctx.recorded)
    _mark(ctx, rec, "running", current=True)


def _stop(ctx: TaskContext, args: dict[str, Any]) -> None:
    rec = _record(ctx, args)
    if not args.get("skiplock"):
        check_lock(rec, allow=("backup",))
    _driver(ctx, rec["type"]).stop(rec["vmid"], rec["config"], log=ctx.log, ready=ctx.recorded)
    _mark(ctx, rec, "stopped", current=True)


def _shutdown(ctx: TaskContext, args: dict[str, Any]) -> None:
    rec = _record(ctx, args)
    check_lock(rec)
    _driver(ctx, rec["type"]).shutdown(
        rec["vmid"],
        rec["config"],
        timeout=int(args.get("timeout") or 60),
        force_stop=bool(args.get("forceStop", 1)),
        log=ctx.log,
    )
    _mark(ctx, rec, "stopped")


def _reboot(ctx: TaskContext, args: dict[str, Any]) -> None:
    rec = _record(ctx, args)
    check_lock(rec)
    driver = _driver(ctx, rec["type"])
    driver.shutdown(
        rec["vmid"],
        rec["config"],
        timeout=int(args.get("timeout") or 60),
        force_stop=True,
        log=ctx.log,
    )
    rec = _apply_pending(ctx, rec["vmid"])  # a reboot applies pending changes
    driver.start(rec["vmid"], rec["config"], volumes=_volumes(ctx), log=ctx.log)
    _mark(ctx, rec, "running", current=True)


def _simple(op: str) -> Callable[[TaskContext, dict[str, Any]], None]:
    def run(ctx: TaskContext, args: dict[str, Any]) -> None:
        rec = _record(ctx, args)
        check_lock(rec)
        driver = _driver(ctx, rec["type"])
        call = {"suspend": driver.suspend, "resume": driver.resume, "reset": driver.reset}[op]
        call(rec["vmid"], rec["config"], log=ctx.log)
        _mark(ctx, rec, "paused" if op == "suspend" else "running", current=True)

    return run


def _destroy(ctx: TaskContext, args: dict[str, Any]) -> None:
    rec = _record(ctx, args)
    check_destroyable(rec, allow=("destroyed",))
    driver = _driver(ctx, rec["type"])
    if driver.status(rec["vmid"], rec["config"]).get("status") == "running":
        raise Conflict(f"{_kind(rec)} {rec['vmid']} is running - destroy failed")
    set_lock(ctx.store, rec["vmid"], "destroyed", expect="destroyed", services=ctx.worker.context)
    try:
        driver.destroy(rec["vmid"], merged_config(rec), volumes=_volumes(ctx), log=ctx.log)
    except BaseException:
        _durable(ctx, lambda: set_lock(ctx.store, rec["vmid"], None, expect="destroyed"))
        raise
    from corral.cluster import snapshots  # which imports this module

    snapshots.forget_states(ctx, rec["vmid"])
    # The record and its live entry go in the transaction that ends this task (its
    # retries, through an etcd restart too, are the task end's).
    ctx.end_writes.append(GoneAtEnd(ctx.store, ctx.node, ctx.worker.context, rec))
    ctx.log(f"{_kind(rec)} {rec['vmid']} destroyed")


def _config(ctx: TaskContext, args: dict[str, Any]) -> None:
    """Apply what a running guest can take now; the rest stays pending."""
    rec = _record(ctx, args)
    if not rec.get("pending") and not rec.get("pending_delete"):
        return
    driver = _driver(ctx, rec["type"])
    if driver.status(rec["vmid"], rec["config"]).get("status") != "running":
        rec = _apply_pending(ctx, rec["vmid"])
        return
    new = merged_config(rec)
    applied = driver.apply_live(rec["vmid"], rec["config"], new, volumes=_volumes(ctx), log=ctx.log)

    def commit(r: dict[str, Any]) -> dict[str, Any]:
        for key in applied:
            if key in r.get("pending", {}):
                r["config"][key] = r["pending"].pop(key)
            elif key in r.get("pending_delete", []):
                r["config"].pop(key, None)
                r["pending_delete"].remove(key)
        return r

    update_record(ctx.store, rec["vmid"], commit)
    for key in sorted(applied):
        ctx.log(f"applied {key} to the running guest")
    left = sorted(set(rec.get("pending", {})) | set(rec.get("pending_delete", [])) - applied)
    if left:
        ctx.log(f"pending until the next start: {', '.join(left)}")


def _resize(ctx: TaskContext, args: dict[str, Any]) -> None:
    rec = _record(ctx, args)
    check_lock(rec)
    driver = _driver(ctx, rec["type"])
    config = driver.resize(
        rec["vmid"],
        rec["config"],
        args["disk"],
        int(args["size"]),
        volumes=_volumes(ctx),
        log=ctx.log,
    )

    def commit(r: dict[str, Any]) -> dict[str, Any]:
        r["config"] = config
        return r

    update_record(ctx.store, rec["vmid"], commit)


def _migrate(ctx: TaskContext, args: dict[str, Any]) -> None:
    """Runs on the source node: stop (or live-move), hand over, start on the target."""
    rec = _record(ctx, args)
    check_lock(rec)
    vmid, target, kind = rec["vmid"], args["target"], _kind(rec)
    driver = _driver(ctx, rec["type"])
    config = merged_config(rec)
    if ctx.store.get(keys.node_alive(target)) is None:
        raise Unavailable(f"target node '{target}' is offline")
    running = driver.status(vmid, rec["config"]).get("status") in ("running", "paused")
    try:  # checked again: the guest may have changed since the API checked
        decision = migration.plan(
            ctx.store,
            driver,
            rec,
            config,
            target,
            running=running,
            online=bool(args.get("online")),
            restart=bool(args.get("restart")),
        )
    except ParamError as err:
        raise Conflict("; ".join(err.errors.values()) or str(err)) from None
    copies, live = decision.copies, decision.mode == "live"
    set_lock(ctx.store, vmid, "migrate")
    stopped_here = False
    copied: dict[str, str] = {}  # source volume ID -> the copy on the target
    data_dir = str(ctx.worker.context.get("data_dir") or "")
    try:
        if live:
            info = ctx.store.get_value(keys.node_info(target)) or {}
            ctx.log(f"live-migrating {kind} {vmid} to {target}")
            driver.migrate_live(
                vmid,
                rec["config"],
                log=ctx.log,
                target_address=str(info.get("address")),
                target_data_dir=info.get("data_dir"),
            )
        elif decision.mode == "restart":
            ctx.log(f"shutting down {kind} {vmid} for a restart migration")
            driver.shutdown(
                vmid,
                rec["config"],
                timeout=int(args.get("timeout") or 180),
                force_stop=True,
                log=ctx.log,
            )
            stopped_here = True
        for volid in sorted(copies.values()):
            ctx.check_abort()
            copied[volid] = volume_moves.copy(
                ctx.store, data_dir, _volumes(ctx), volid, target, vmid=vmid, log=ctx.log
            )
            # In the task's record: a restart after a kill removes them (recovery.py).
            ctx.worker.set_fields(ctx.record, copies=dict(copied))
            ctx.log(f"copied {volid} to '{target}' as {copied[volid]}")
        driver.release(vmid, config, volumes=_volumes(ctx), log=ctx.log)

        def move(r: dict[str, Any]) -> dict[str, Any]:
            r["node"], r["lock"] = target, None
            r["config"] = volume_moves.rewrite(r["config"], copied)
            r["pending"] = volume_moves.rewrite(r.get("pending") or {}, copied)
            return r

        _durable(ctx, lambda: update_record(ctx.store, vmid, move))
    except BaseException:
        # Nothing moved: the guest stays here, unlocked, running again if it was;
        # the copies made on the target go.
        for new in copied.values():
            volume_moves.remove_remote(ctx.store, data_dir, target, new, log=ctx.log)
        if copied:
            try:
                driver.adopt(vmid, rec["config"], volumes=_volumes(ctx), log=ctx.log)
            except Exception as err:  # noqa: BLE001 - report the first failure
                ctx.log(f"could not re-adopt {kind} {vmid} here: {err}")
        _durable(ctx, lambda: set_lock(ctx.store, vmid, None, expect="migrate"))
        if stopped_here:
            try:
                driver.start(vmid, rec["config"], volumes=_volumes(ctx), log=ctx.log)
            except Exception as err:  # noqa: BLE001 - report the first failure
                ctx.log(f"could not restart {kind} {vmid} here: {err}")
        raise
    _mark(ctx, rec, "migrated")
    ctx.log(f"{kind} {vmid} now belongs to node {target}")
    for volid in copied:  # the guest runs from the copies now
        try:
            _volumes(ctx).free(volid)
            ctx.log(f"removed the source volume {volid}")
        except Exception as err:  # noqa: BLE001 - a leftover, not a failed migration
            ctx.log(f"WARNING: could not remove the source volume {volid}: {err}")
    if stopped_here:
        from corral.cluster.task_client import Tasks

        tasks = Tasks(ctx.store)
        upid = tasks.submit(
            node=target,
            type=TASK_TYPES[rec["type"]]["start"],
            id=str(vmid),
            user=ctx.user,
            args={"vmid": vmid},
            serial=serial(vmid),
        )
        ctx.log(f"starting it on {target}: {upid}")
        status = tasks.wait(upid, timeout=300, poll=0.1)
        if status.get("exitstatus") != "OK":
            raise CorralError(
                f"migrated, but the start on {target} failed: {status.get('exitstatus')}"
            )
        ctx.log(f"{kind} {vmid} running on {target}")


HANDLERS: dict[str, Callable[[TaskContext, dict[str, Any]], None]] = {
    "create": _create,
    "start": _start,
    "stop": _stop,
    "shutdown": _shutdown,
    "reboot": _reboot,
    "suspend": _simple("suspend"),
    "resume": _simple("resume"),
    "reset": _simple("reset"),
    "destroy": _destroy,
    "config": _config,
    "resize": _resize,
    "migrate": _migrate,
}
for _type, _names in TASK_TYPES.items():
    for _op, _task in _names.items():
        # A start or stop prepares and checks while its record is written
        # (Tasks.submit): the driver calls `ready` (TaskContext.recorded) right
        # before it starts or stops the guest.
        task_handler(_task, early=_op in ("start", "stop"))(HANDLERS[_op])


# -- live status -----------------------------------------------------------------


def _mark(ctx: TaskContext, rec: dict[str, Any], status: str, *, current: bool = False) -> None:
    """Publish a state change at once instead of waiting for the next 2 s round.
    Before the task's end: whoever sees the task OK then reads the new state
    (a delete refused as running, /cluster/resources). `current`: `rec` is the
    record as it stands (a power task changes no record), so it is not read again;
    its entry is then written with the task's end, in one transaction (the
    handler's last step), once the node has published its first document."""
    services = ctx.worker.context
    if current and services.get("status_doc") is not None:
        ctx.end_writes.append(StatusAtEnd(ctx.store, ctx.node, services, rec))
        return
    try:
        publish_status_for(
            ctx.store, ctx.node, ctx.worker.context, only=rec["vmid"], rec=rec if current else None
        )
    except (Unavailable, CorralError) as err:
        log.debug("status publish after %s failed: %s", status, err)


def _forget_status(ctx: TaskContext, vmid: int) -> None:
    try:
        publish_status_for(ctx.store, ctx.node, ctx.worker.context, only=vmid)
    except (Unavailable, CorralError):
        pass
