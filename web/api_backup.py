"""POST /nodes/{node}/vzdump and restores: parsing and permissions only.

The rules (selection, options, restore claims) are corral.cluster.backup_requests';
the flows corral.cluster.backup and corral.cluster.restore.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import archive
from corral.cluster import backup_requests as requests
from corral.cluster.errors import ParamError
from corral.cluster.schema import NODE, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node

VMID_LIST = r"\d+(?:[,; ]+\d+)*"
OPTIONS: dict[str, Param] = {
    "vmid": Param(
        "string", "The ID of the guest system you want to backup.", optional=True, pattern=VMID_LIST
    ),  # fmt: skip
    "all": Param(
        "boolean", "Backup all known guest systems on this host.", optional=True, default=0
    ),  # fmt: skip
    "exclude": Param(
        "string",
        "Exclude specified guest systems (assumes --all)",
        optional=True,
        pattern=VMID_LIST,
    ),  # fmt: skip
    "pool": Param(
        "string", "Backup all known guest systems included in the specified pool.", optional=True
    ),  # fmt: skip
    "mode": Param(
        "string",
        "Backup mode.",
        optional=True,
        default="snapshot",
        enum=("snapshot", "suspend", "stop"),
    ),  # fmt: skip
    "compress": Param(
        "string",
        "Compress dump file.",
        optional=True,
        default="0",
        enum=("0", "1", "gzip", "lzo", "zstd"),
    ),  # fmt: skip
    "storage": Param(
        "string", "Store resulting file to this storage.", optional=True, format="pve-storage-id"
    ),  # fmt: skip
    "notes-template": Param(
        "string",
        "Template string for generating notes for the backup(s).",
        optional=True,
        max_length=1024,
    ),  # fmt: skip
    "bwlimit": Param("integer", "Limit I/O bandwidth (in KiB/s).", optional=True, minimum=0),
    "protected": Param("boolean", "If true, mark backup(s) as protected.", optional=True),
    "remove": Param(
        "boolean", "Prune older backups according to 'prune-backups'.", optional=True, default=1
    ),  # fmt: skip
    "prune-backups": Param(
        "string",
        "Use these retention options instead of those from the storage configuration.",
        optional=True,
    ),  # fmt: skip
}


def vzdump_perm(ctx: Ctx, **params: Any) -> None:
    ctx.check(f"/storage/{params.get('storage') or 'local'}", ["Datastore.AllocateSpace"])
    for vmid in requests.split_ids(params.get("vmid")):
        ctx.check(f"/vms/{vmid}", ["VM.Backup"])


@endpoint(
    "POST",
    "/nodes/{node}/vzdump",
    params={"node": NODE, **OPTIONS},
    perm=vzdump_perm,
    description="Create backup.",
)
def vzdump(ctx: Ctx, node: str, **params: Any) -> str:
    require_node(ctx, node)
    ids, opts = requests.plan_vzdump(ctx.store, node, params, ctx.services.get("volumes"))
    for vmid in ids:
        ctx.check(f"/vms/{vmid}", ["VM.Backup"])
    return requests.submit_vzdump(ctx.tasks, node, ids, opts, ctx.user)


# -- restore: POST /nodes/{node}/lxc restore=1, POST /nodes/{node}/qemu archive= -------------


def restore_params(type: str) -> dict[str, Param]:
    """What POST /nodes/{node}/{type} takes for a restore (declared by that endpoint)."""
    out = {
        "force": Param(
            "boolean", "Allow to overwrite an existing guest (restore).", optional=True
        ),  # fmt: skip
        "unique": Param("boolean", "Assign a unique random ethernet address.", optional=True),
    }
    if type == "lxc":
        out["restore"] = Param("boolean", "Mark this as restore task.", optional=True)
    else:
        out["archive"] = Param("string", "The backup archive.", optional=True, max_length=255)
        out["storage"] = Param("string", "Default storage.", optional=True,
                               format="pve-storage-id")  # fmt: skip
    return out


def restore_request(
    ctx: Ctx, type: str, node: str, vmid: int, raw: dict[str, Any], *, start: bool
) -> str:
    """Check permissions for a restore and queue it (corral.cluster.backup_requests)."""
    require_node(ctx, node)
    _, storage = requests.archive_of(type, raw)
    ctx.check(f"/storage/{storage}", ["Datastore.Audit"])
    if raw.get("storage"):
        ctx.check(f"/storage/{raw['storage']}", ["Datastore.AllocateSpace"])
    return requests.request_restore(ctx.store, ctx.tasks, type, node, vmid, raw,
                                    user=ctx.user, start=start)  # fmt: skip


is_restore = requests.is_restore
drop_restore_params = requests.drop_restore_params


@endpoint(
    "GET",
    "/nodes/{node}/vzdump/extractconfig",
    params={"node": NODE, "volume": Param("string", "Volume identifier", max_length=512)},
    perm=lambda ctx, volume, **_: ctx.check(
        f"/storage/{volume.partition(':')[0]}", ["Datastore.Audit"]
    ),
    local=True,
    description="Extract configuration from vzdump backup archive.",
)
def extractconfig(ctx: Ctx, node: str, volume: str) -> str:
    from corral.storage.volid import split_volid

    require_node(ctx, node)
    _, volname = split_volid(volume)
    parsed = (
        archive.parse_name(volname.partition("/")[2]) if volname.startswith("backup/") else None
    )
    if parsed is None:
        raise ParamError.one("volume", f"'{volume}' is not a backup archive")
    volumes = ctx.services.get("volumes")
    if volumes is None:
        raise ParamError.one("volume", "no storage on this node")
    return archive.read_config_text(volumes.file_path(volume), parsed[0])
