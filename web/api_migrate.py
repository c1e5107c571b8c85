"""Migration endpoints with Proxmox's paths, for containers and VMs.

`GET .../migrate` answers Proxmox's precondition check (which nodes can take the
guest and why the others cannot); `POST .../migrate` becomes a task on the
guest's current node (corral.cluster.guests._migrate). Without `target`, the
node is chosen by free resources (corral.cluster.placement).
"""

from __future__ import annotations

from typing import Any

from corral.cluster import guests, keys, placement, volume_moves
from corral.cluster.errors import ParamError
from corral.cluster.guest_driver import GuestDriver
from corral.cluster.schema import NODE, VMID, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node
from corral.web.api_guests import KIND, driver_for

TARGET = Param("string", "Target node.", optional=True, format="pve-node")


def _online_nodes(ctx: Ctx) -> list[str]:
    return sorted(kv.key.split("/", 1)[1] for kv in ctx.store.range(keys.NODE_ALIVE))


def _local_disks(ctx: Ctx, driver: GuestDriver, config: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, volid in sorted(driver.volumes_of(config).items()):
        conf = ctx.store.get_value(keys.storage(volid.split(":", 1)[0])) or {}
        if not volume_moves.shared(conf):
            out.append({"volid": volid, "drivename": key, "is_unused": 0})
    return out


def register(type: str) -> None:
    path = f"/nodes/{{node}}/{type}/{{vmid}}/migrate"
    kind = KIND[type]

    @endpoint(
        "GET",
        path,
        params={"node": NODE, "vmid": VMID, "target": TARGET},
        perm=("/vms/{vmid}", ["VM.Migrate"]),
        description=f"Get preconditions for migration of the {kind}.",
    )
    def precondition(ctx: Ctx, node: str, vmid: int, target: str | None = None) -> dict[str, Any]:
        require_node(ctx, node)
        rec = guests.get_record(ctx.store, vmid, type=type, node=node)
        driver = driver_for(ctx, type)
        config = guests.merged_config(rec)
        allowed, not_allowed = [], {}
        for other in _online_nodes(ctx):
            if other == node or (target and other != target):
                continue
            blockers = volume_moves.plan(ctx.store, driver, config, other)[1]
            if blockers:
                storages = sorted({b.storage for b in blockers})
                not_allowed[other] = {"unavailable_storages": storages}
            else:
                allowed.append(other)
        live = (ctx.store.get_value(keys.guest_status(node)) or {}).get(str(vmid), {})
        return {
            "running": int(live.get("status") == "running"),
            "allowed_nodes": allowed,
            "not_allowed_nodes": not_allowed,
            "local_disks": _local_disks(ctx, driver, config),
            "local_resources": [],
            "mapped-resources": [],
        }

    extra: dict[str, Param] = {
        "online": Param("boolean", "Use online/live migration.", optional=True, default=0),
        "bwlimit": Param(
            "integer", "Override I/O bandwidth limit (in KiB/s).", optional=True, minimum=0
        ),  # fmt: skip
    }
    if type == "lxc":
        extra["restart"] = Param("boolean", "Use restart migration", optional=True, default=0)
        extra["timeout"] = Param("integer", "Timeout in seconds for shutdown for restart "
                                 "migration", optional=True, default=180, minimum=0)  # fmt: skip
        extra["target-storage"] = Param("string", "Mapping from source to target storages.",
                                        optional=True)  # fmt: skip
    else:
        extra["force"] = Param("boolean", "Allow to migrate VMs which use local devices.",
                               optional=True, default=0)  # fmt: skip
        extra["with-local-disks"] = Param("boolean", "Enable live storage migration for "
                                          "local disks", optional=True, default=0)  # fmt: skip
        extra["targetstorage"] = Param("string", "Mapping from source to target storages.",
                                       optional=True)  # fmt: skip
        extra["migration_type"] = Param("string", "Migration traffic is encrypted using an "
                                        "SSH tunnel by default.", optional=True,
                                        enum=("secure", "insecure"))  # fmt: skip
        extra["migration_network"] = Param("string", "CIDR of the (sub) network that is used "
                                           "for migration.", optional=True)  # fmt: skip

    @endpoint(
        "POST",
        path,
        params={"node": NODE, "vmid": VMID, "target": TARGET, **extra},
        perm=("/vms/{vmid}", ["VM.Migrate"]),
        description=f"Migrate the {kind} to another node. Creates a new migration task. "
        "Without target, the node with the most free memory is chosen.",
    )
    def migrate(ctx: Ctx, node: str, vmid: int, target: str | None = None, **params: Any) -> str:
        require_node(ctx, node)
        rec = guests.get_record(ctx.store, vmid, type=type, node=node)
        guests.check_lock(rec)
        driver = driver_for(ctx, type)
        config = guests.merged_config(rec)
        if target is None:
            memory = int(config.get("memory", 512)) << 20
            target = placement.choose_node(ctx.store, memory=memory, exclude=frozenset({node}))
        if target == node:
            raise ParamError.one("target", f"target is local node '{node}'")
        require_node(ctx, target)
        if ctx.store.get(keys.node_alive(target)) is None:
            raise ParamError.one("target", f"target node '{target}' is offline")
        for key in ("target-storage", "targetstorage", "with-local-disks"):
            if params.get(key):
                raise ParamError.one(key, "moving volumes to other storage is not supported yet")
        copies, blockers = volume_moves.plan(ctx.store, driver, config, target)
        if blockers:
            raise ParamError.one(
                "target",
                f"can't migrate {kind} {vmid} to '{target}': {', '.join(map(str, blockers))}",
            )
        live = (ctx.store.get_value(keys.guest_status(node)) or {}).get(str(vmid), {})
        running = live.get("status") in ("running", "paused")
        if copies and running and type == "qemu" and params.get("online"):
            raise ParamError.one(
                "online",
                f"can't live-migrate VM {vmid} with local disks ({', '.join(sorted(copies))}): "
                "put them on shared storage or migrate offline",
            )
        if running and type == "lxc" and not params.get("restart"):
            if params.get("online"):
                raise ParamError.one("online", "lxc live migration is currently not implemented")
            raise ParamError.one("restart", f"CT {vmid} is running - use restart migration")
        if running and type == "qemu" and not params.get("online"):
            raise ParamError.one("online", f"VM {vmid} is running - use online migration")
        args = {"vmid": vmid, "target": target}
        args.update({k: v for k, v in params.items() if v is not None})
        return ctx.submit(
            node=node,
            type=guests.TASK_TYPES[type]["migrate"],
            id=str(vmid),
            args=args,
            serial=guests.serial(vmid),
        )

    precondition.__name__ = f"{type}_migrate_precondition"
    migrate.__name__ = f"{type}_migrate"


for _t in ("lxc", "qemu"):
    register(_t)
