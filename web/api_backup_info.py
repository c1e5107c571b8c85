"""/cluster/backup-info: which guests no backup job covers (Proxmox's path and shape).

A guest is covered when an enabled job (/cluster/backup) selects it, by its
VMID list or by `all` without excluding it; templates are never listed.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import keys
from corral.web.api import Ctx, endpoint


@endpoint("GET", "/cluster/backup-info", description="Index for backup info related endpoints")
def backup_info_index(ctx: Ctx) -> list[dict[str, str]]:
    return [{"subdir": "not-backed-up"}]


def covered_vmids(ctx: Ctx) -> set[int]:
    """VMIDs some enabled backup job includes (corral.cluster.backup_jobs)."""
    from corral.cluster import backup_jobs

    return backup_jobs.covered(ctx.store)


@endpoint(
    "GET",
    "/cluster/backup-info/not-backed-up",
    perm=("/", ["Sys.Audit"]),
    description="Shows all guests which are not covered by any backup job.",
)
def not_backed_up(ctx: Ctx) -> list[dict[str, Any]]:
    covered = covered_vmids(ctx)
    out = []
    for kv in ctx.store.range(keys.GUESTS):
        rec = kv.value
        vmid = int(rec["vmid"])
        config = rec.get("config") or {}
        # Templates are never backed up by jobs, so Proxmox does not list them.
        if vmid in covered or config.get("template"):
            continue
        if not ctx.can(f"/vms/{vmid}", ["VM.Audit"]):
            continue
        row: dict[str, Any] = {"vmid": vmid, "type": rec["type"]}
        name = config.get("hostname") or config.get("name")
        if name:
            row["name"] = name
        out.append(row)
    return sorted(out, key=lambda r: r["vmid"])
