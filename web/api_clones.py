"""Clone and template endpoints with Proxmox's paths, for `lxc` and `qemu`.

The rules are the guest service's (corral.cluster.guest_service_copies, over
corral.cluster.clones): it refuses what it can at once, claims the new
guest's record (locked `create`) and queues the task on the source's node.
This module parses and formats.
"""

from __future__ import annotations

from typing import Any

from corral.cluster.schema import NODE, VMID, Param, ignored
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node
from corral.web.api_guests import service
from corral.web.api_snapshots import DESCRIPTION

KIND = {"lxc": "CT", "qemu": "VM"}
STORAGE = Param("string", "Target storage for full clone.", optional=True,
                format="pve-storage-id")  # fmt: skip


def register(type: str) -> None:
    one = f"/nodes/{{node}}/{type}/{{vmid}}"
    kind = KIND[type]
    name_key = "hostname" if type == "lxc" else "name"

    def clone_perm(ctx: Ctx, vmid: int, newid: int, **params: Any) -> None:
        ctx.check(f"/vms/{vmid}", ["VM.Clone"])
        ctx.check(f"/vms/{newid}", ["VM.Allocate"])
        if params.get("storage"):
            ctx.check(f"/storage/{params['storage']}", ["Datastore.AllocateSpace"])

    @endpoint(
        "POST",
        f"{one}/clone",
        params={
            "node": NODE,
            "vmid": VMID,
            "newid": Param("integer", "VMID for the clone.", minimum=100, maximum=999999999),
            name_key: Param(
                "string", f"Set a {name_key} for the new {kind}.", optional=True, format="dns-name"
            ),  # fmt: skip
            "description": DESCRIPTION,
            "full": Param("boolean", "Create a full copy of all disks.", optional=True),
            "target": Param("string", "Target node.", optional=True, format="pve-node"),
            "storage": STORAGE,
            "snapname": Param(
                "string",
                "The name of the snapshot.",
                optional=True,
                format="pve-configid",
                max_length=40,
            ),  # fmt: skip
            "pool": ignored(
                "string",
                "Add the new guest to the specified pool.",
                "add the clone to a pool with PUT /pools/{poolid}",
            ),  # fmt: skip
            "bwlimit": ignored(
                "integer",
                "Override I/O bandwidth limit (in KiB/s).",
                "corral does not throttle volume copies",
                minimum=0,
            ),  # fmt: skip
            **(
                {
                    "format": ignored(
                        "string",
                        "Target format for file storage.",
                        "a full copy keeps the source's format",
                        enum=("raw", "qcow2", "vmdk"),
                    ),  # fmt: skip
                }  # fmt: skip
                if type == "qemu"
                else {}
            ),
        },
        perm=clone_perm,
        description=f"Create a copy of the {kind}.",
    )
    def clone(ctx: Ctx, node: str, vmid: int, newid: int, **params: Any) -> str:
        require_node(ctx, node)
        full = params.get("full")
        return service(ctx).clone(
            vmid,
            newid,
            user=ctx.user,
            full=None if full is None else bool(full),
            target=params.get("target"),
            storage=params.get("storage"),
            snapname=params.get("snapname"),
            name=params.get(name_key),
            description=params.get("description"),
            type=type,
            node=node,
        )

    template_params: dict[str, Param] = {"node": NODE, "vmid": VMID}
    if type == "qemu":
        template_params["disk"] = Param(
            "string", "If you want to convert only 1 disk to base image.", optional=True
        )

    @endpoint(
        "POST",
        f"{one}/template",
        params=template_params,
        perm=("/vms/{vmid}", ["VM.Allocate"]),
        description=f"Create a Template of the {kind}.",
    )
    def template(ctx: Ctx, node: str, vmid: int, disk: str | None = None) -> str:
        require_node(ctx, node)
        return service(ctx).template(vmid, user=ctx.user, disk=disk, type=type, node=node)

    clone.__name__ = f"{type}_clone"
    template.__name__ = f"{type}_template"


for _t in ("lxc", "qemu"):
    register(_t)
