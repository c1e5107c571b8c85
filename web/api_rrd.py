"""`rrddata`: history for graphs, answered as Proxmox answers it.

    GET /nodes/{node}/rrddata?timeframe=hour[&cf=MAX]
    GET /nodes/{node}/{qemu,lxc}/{vmid}/rrddata?timeframe=day
    GET /nodes/{node}/storage/{storage}/rrddata?timeframe=week

Every node records the whole cluster (corral.cluster.metrics_rrd), so the
answering node reads its own files: no forward, and a migrated guest's
history is there on any node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.cluster import guests, keys, metrics_rrd
from corral.cluster.errors import NotFound, Unavailable
from corral.cluster.schema import NODE, STORAGE_ID, VMID, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node

CF = Param("string", "The RRD consolidation function", optional=True, enum=metrics_rrd.CFS)
TIMEFRAME = Param(
    "string",
    "Specify the time frame you are interested in.",
    enum=("hour", "day", "week", "month", "year"),
)
NODE_TIMEFRAME = Param(
    "string",
    "Specify the time frame you are interested in.",
    enum=("hour", "day", "week", "month", "year", "decade"),
)


def _rrd(ctx: Ctx) -> metrics_rrd.RrdStore:
    reason = metrics_rrd.available()
    if reason is not None:
        raise Unavailable(f"no history on this node: {reason}")
    rrd = ctx.services.get("rrd")
    if rrd is None:
        rrd = ctx.services["rrd"] = metrics_rrd.RrdStore(Path(ctx.data_dir) / "rrd")
    return rrd  # type: ignore[no-any-return]


@endpoint(
    "GET",
    "/nodes/{node}/rrddata",
    params={"node": NODE, "timeframe": NODE_TIMEFRAME, "cf": CF},
    perm=("/nodes/{node}", ["Sys.Audit"]),
    description="Read node RRD statistics",
)
def node_rrddata(ctx: Ctx, node: str, timeframe: str, cf: str = "AVERAGE") -> list[dict[str, Any]]:
    require_node(ctx, node)
    return _rrd(ctx).fetch("pve2-node", node, timeframe, cf or "AVERAGE")


def _register_guest(type: str) -> None:
    @endpoint(
        "GET",
        f"/nodes/{{node}}/{type}/{{vmid}}/rrddata",
        params={"node": NODE, "vmid": VMID, "timeframe": TIMEFRAME, "cf": CF},
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description="Read VM RRD statistics",
    )
    def guest_rrddata(
        ctx: Ctx, node: str, vmid: int, timeframe: str, cf: str = "AVERAGE"
    ) -> list[dict[str, Any]]:
        require_node(ctx, node)
        guests.get_record(ctx.store, vmid, type=type, node=node)
        return _rrd(ctx).fetch("pve2-vm", str(vmid), timeframe, cf or "AVERAGE")

    guest_rrddata.__name__ = f"{type}_rrddata"


for _type in ("qemu", "lxc"):
    _register_guest(_type)


@endpoint(
    "GET",
    "/nodes/{node}/storage/{storage}/rrddata",
    params={"node": NODE, "storage": STORAGE_ID, "timeframe": TIMEFRAME, "cf": CF},
    perm=lambda ctx, storage, **_: ctx.check(
        f"/storage/{storage}", ["Datastore.Audit", "Datastore.AllocateSpace"], any_of=True
    ),
    description="Read storage RRD statistics.",
)
def storage_rrddata(
    ctx: Ctx, node: str, storage: str, timeframe: str, cf: str = "AVERAGE"
) -> list[dict[str, Any]]:
    require_node(ctx, node)
    if ctx.store.get(keys.storage(storage)) is None:
        raise NotFound(f"storage '{storage}' does not exist")
    return _rrd(ctx).fetch("pve2-storage", f"{node}/{storage}", timeframe, cf or "AVERAGE")
