"""Guest snapshot endpoints with Proxmox's paths, for `lxc` and `qemu`.

The rules are corral.cluster.snapshots'; this module parses, checks what can
be refused at once (name, lock, a disk that cannot snapshot) and queues the
task on the guest's node.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import guests, snapshots
from corral.cluster.errors import ParamError
from corral.cluster.schema import NODE, VMID, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node

KIND = {"lxc": "CT", "qemu": "VM"}
SNAPNAME = Param("string", "The name of the snapshot.", format="pve-configid", max_length=40)
DESCRIPTION = Param("string", "A textual description or comment.", optional=True, max_length=8192)


def _record(ctx: Ctx, type: str, node: str, vmid: int) -> dict[str, Any]:
    require_node(ctx, node)
    return guests.get_record(ctx.store, vmid, type=type, node=node)


def _running(ctx: Ctx, rec: dict[str, Any]) -> bool:
    from corral.cluster import keys

    doc = ctx.store.get_value(keys.guest_status(rec["node"])) or {}
    return doc.get(str(rec["vmid"]), {}).get("status") in ("running", "paused")


def _precheck_disks(ctx: Ctx, rec: dict[str, Any]) -> None:
    """Refuse at once where a disk's storage cannot snapshot (this node knows the
    drivers and storages; the task checks again on the guest's node)."""
    drivers = ctx.services.get("drivers") or {}
    driver, volumes = drivers.get(rec["type"]), ctx.services.get("volumes")
    if driver is None or volumes is None:
        return
    try:
        snapshots.require_snapshot_feature(driver, rec["config"], volumes)
    except ParamError as err:
        # A storage not available on this node: the guest's node decides.
        if "not available on node" not in str(err.errors):
            raise


def register(type: str) -> None:
    one = f"/nodes/{{node}}/{type}/{{vmid}}"
    base = f"{one}/snapshot"
    kind = KIND[type]
    task = snapshots.TASK_TYPES[type]
    path_params = {"node": NODE, "vmid": VMID}

    @endpoint(
        "GET",
        base,
        params=path_params,
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description="List all snapshots.",
    )
    def list_snapshots(ctx: Ctx, node: str, vmid: int) -> list[dict[str, Any]]:
        rec = _record(ctx, type, node, vmid)
        return snapshots.tree(rec, running=_running(ctx, rec))

    create_params = {**path_params, "snapname": SNAPNAME, "description": DESCRIPTION}
    if type == "qemu":
        create_params["vmstate"] = Param("boolean", "Save the vmstate", optional=True, default=0)

    @endpoint(
        "POST",
        base,
        params=create_params,
        perm=("/vms/{vmid}", ["VM.Snapshot"]),
        description=f"Snapshot a {kind}.",
    )
    def create_snapshot(
        ctx: Ctx,
        node: str,
        vmid: int,
        snapname: str,
        description: str | None = None,
        vmstate: int = 0,
    ) -> str:
        rec = _record(ctx, type, node, vmid)
        snapshots.check_create(rec, snapname)
        _precheck_disks(ctx, rec)
        args = {"vmid": vmid, "snapname": snapname, "description": description or ""}
        if vmstate:
            args["vmstate"] = 1
        return ctx.submit(
            node=node, type=task["create"], id=str(vmid), args=args, serial=guests.serial(vmid)
        )

    snap_params = {**path_params, "snapname": SNAPNAME}

    @endpoint(
        "GET",
        f"{base}/{{snapname}}",
        params=snap_params,
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description="Directory index.",
    )
    def snapshot_index(ctx: Ctx, node: str, vmid: int, snapname: str) -> list[dict[str, str]]:
        snapshots.get_snapshot(_record(ctx, type, node, vmid), snapname)
        return [{"cmd": "rollback"}, {"cmd": "config"}]

    @endpoint(
        "GET",
        f"{base}/{{snapname}}/config",
        params=snap_params,
        perm=lambda ctx, vmid, **_: ctx.check(
            f"/vms/{vmid}", ["VM.Snapshot", "VM.Snapshot.Rollback", "VM.Audit"], any_of=True
        ),
        description="Get snapshot configuration",
    )
    def get_snapshot_config(ctx: Ctx, node: str, vmid: int, snapname: str) -> dict[str, Any]:
        return snapshots.snapshot_config(_record(ctx, type, node, vmid), snapname)

    @endpoint(
        "PUT",
        f"{base}/{{snapname}}/config",
        params={**snap_params, "description": DESCRIPTION},
        perm=("/vms/{vmid}", ["VM.Snapshot"]),
        description="Update snapshot metadata.",
    )
    def put_snapshot_config(
        ctx: Ctx, node: str, vmid: int, snapname: str, description: str | None = None
    ) -> None:
        _record(ctx, type, node, vmid)
        if description is not None:
            snapshots.set_description(ctx.store, vmid, snapname, description)

    def rollback_perm(ctx: Ctx, vmid: int, **_: Any) -> None:
        ctx.check(f"/vms/{vmid}", ["VM.Snapshot", "VM.Snapshot.Rollback"], any_of=True)

    @endpoint(
        "POST",
        f"{base}/{{snapname}}/rollback",
        params={
            **snap_params,
            "start": Param(
                "boolean",
                f"Whether the {kind} should get started after rolling back successfully.",
                optional=True,
                default=0,
            ),
        },
        perm=rollback_perm,
        description=f"Rollback {kind} state to specified snapshot.",
    )
    def rollback(ctx: Ctx, node: str, vmid: int, snapname: str, start: int = 0) -> str:
        rec = _record(ctx, type, node, vmid)
        snapshots.get_snapshot(rec, snapname)
        guests.check_lock(rec)
        return ctx.submit(
            node=node,
            type=task["rollback"],
            id=str(vmid),
            args={"vmid": vmid, "snapname": snapname, "start": int(bool(start))},
            serial=guests.serial(vmid),
        )

    @endpoint(
        "DELETE",
        f"{base}/{{snapname}}",
        params={
            **snap_params,
            "force": Param(
                "boolean",
                "For removal from config file, even if removing disk snapshots fails.",
                optional=True,
                default=0,
            ),
        },
        perm=("/vms/{vmid}", ["VM.Snapshot"]),
        description="Delete a snapshot.",
    )
    def delete_snapshot(ctx: Ctx, node: str, vmid: int, snapname: str, force: int = 0) -> str:
        rec = _record(ctx, type, node, vmid)
        snapshots.get_snapshot(rec, snapname)
        guests.check_lock(rec)
        return ctx.submit(
            node=node,
            type=task["delete"],
            id=str(vmid),
            args={"vmid": vmid, "snapname": snapname, "force": int(bool(force))},
            serial=guests.serial(vmid),
        )

    for fn in (list_snapshots, create_snapshot, snapshot_index, get_snapshot_config):
        fn.__name__ = f"{type}_{fn.__name__}"
    for fn in (put_snapshot_config, rollback, delete_snapshot):
        fn.__name__ = f"{type}_{fn.__name__}"


for _t in ("lxc", "qemu"):
    register(_t)
