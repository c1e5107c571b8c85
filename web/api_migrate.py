"""Migration endpoints with Proxmox's paths, for containers and VMs.

`GET .../migrate` answers Proxmox's precondition check (which nodes can take the
guest and why the others cannot); `POST .../migrate` becomes a task on the
guest's current node. The policy (which mode, which nodes) is
corral.cluster.migration's, reached through corral.cluster.guest_service.
"""

from __future__ import annotations

from typing import Any

from corral.cluster.schema import NODE, VMID, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node
from corral.web.api_guests import KIND, service

TARGET = Param("string", "Target node.", optional=True, format="pve-node")


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
        return service(ctx).migrate_preconditions(vmid, target=target, type=type, node=node)

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
        online = bool(params.pop("online", 0))
        restart = bool(params.pop("restart", 0))
        return service(ctx).migrate(
            vmid,
            user=ctx.user,
            target=target,
            online=online,
            restart=restart,
            type=type,
            node=node,
            **params,
        )

    precondition.__name__ = f"{type}_migrate_precondition"
    migrate.__name__ = f"{type}_migrate"


for _t in ("lxc", "qemu"):
    register(_t)
