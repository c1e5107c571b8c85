"""Guest snapshot endpoints with Proxmox's paths, for `lxc` and `qemu`.

The rules are the guest service's (corral.cluster.guest_service_copies, over
corral.cluster.snapshots); this module parses and formats.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import snapshots
from corral.cluster.schema import NODE, VMID, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node
from corral.web.api_guests import service

KIND = {"lxc": "CT", "qemu": "VM"}
SNAPNAME = Param("string", "The name of the snapshot.", format="pve-configid", max_length=40)
DESCRIPTION = Param("string", "A textual description or comment.", optional=True, max_length=8192)


def _record(ctx: Ctx, type: str, node: str, vmid: int) -> dict[str, Any]:
    require_node(ctx, node)
    return service(ctx).record(vmid, type=type, node=node)


def register(type: str) -> None:
    one = f"/nodes/{{node}}/{type}/{{vmid}}"
    base = f"{one}/snapshot"
    kind = KIND[type]
    path_params = {"node": NODE, "vmid": VMID}

    @endpoint(
        "GET",
        base,
        params=path_params,
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description="List all snapshots.",
    )
    def list_snapshots(ctx: Ctx, node: str, vmid: int) -> list[dict[str, Any]]:
        require_node(ctx, node)
        return service(ctx).snapshots(vmid, type=type, node=node)

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
        require_node(ctx, node)
        return service(ctx).snapshot(vmid, snapname, user=ctx.user, description=description or "",
                                     vmstate=bool(vmstate), type=type, node=node)  # fmt: skip

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
        require_node(ctx, node)
        return service(ctx).rollback(vmid, snapname, user=ctx.user, start=bool(start), type=type,
                                     node=node)  # fmt: skip

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
        require_node(ctx, node)
        return service(ctx).delete_snapshot(vmid, snapname, user=ctx.user, force=bool(force),
                                            type=type, node=node)  # fmt: skip

    for fn in (list_snapshots, create_snapshot, snapshot_index, get_snapshot_config):
        fn.__name__ = f"{type}_{fn.__name__}"
    for fn in (put_snapshot_config, rollback, delete_snapshot):
        fn.__name__ = f"{type}_{fn.__name__}"


for _t in ("lxc", "qemu"):
    register(_t)
