"""Version, nodes, node status, cluster status, next free VMID, resources."""

from __future__ import annotations

import threading
import time
from typing import Any

from corral.cluster import keys
from corral.cluster.cluster_view import (
    HA_MANAGER_STATUS,
    HA_RESOURCES,
    ClusterView,
    local_value,
    shared_view,
)
from corral.cluster.errors import Conflict, NotFound, ParamError, Unavailable
from corral.cluster.ha import status as ha_status
from corral.cluster.schema import NODE, Param
from corral.web.api import Ctx, endpoint

VERSION = "0.1.0"
# Proxmox API clients gate features on the version they read here.
PVE_COMPAT = "8.1.0"


@endpoint("GET", "/version", description="API version details.")
def version(ctx: Ctx) -> dict[str, Any]:
    return {
        "version": PVE_COMPAT,
        "release": PVE_COMPAT.rsplit(".", 1)[0],
        "repoid": f"corral-{VERSION}",
        "product": "corral",
        "corral": VERSION,
    }


def cluster_view(ctx: Ctx) -> ClusterView:
    """The node's in-memory view, caught up with the store (else the answer is marked stale)."""
    view = shared_view(ctx.services, ctx.store)
    if not view.sync():
        ctx.store.mark_stale()
    return view


def node_entries(ctx: Ctx) -> list[dict[str, Any]]:
    return cluster_view(ctx).nodes()


@endpoint("GET", "/nodes", description="Cluster node index.")
def list_nodes(ctx: Ctx) -> list[dict[str, Any]]:
    # Like Proxmox, every authenticated user sees the node list; figures
    # need Sys.Audit on the node.
    out = []
    for n in node_entries(ctx):
        if not ctx.can(f"/nodes/{n['node']}", ["Sys.Audit"]):
            n = {k: n[k] for k in ("node", "id", "type", "status", "level")}
        out.append(n)
    return out


def require_node(ctx: Ctx, node: str) -> dict[str, Any]:
    info = local_value(ctx.services, ctx.store, keys.node_info(node))
    if info is None:  # a node that joined a moment ago: ask the store before "no"
        info = ctx.store.get_value(keys.node_info(node))
    if info is None:
        raise NotFound(f"no such node '{node}'")
    return info


@endpoint("GET", "/nodes/{node}", params={"node": NODE}, description="Node index.")
def node_index(ctx: Ctx, node: str) -> list[dict[str, str]]:
    require_node(ctx, node)
    names = ("status", "tasks", "storage", "lxc", "qemu", "version", "services", "network",
             "syslog", "journal")  # fmt: skip
    return [{"name": n} for n in names]


@endpoint(
    "GET",
    "/nodes/{node}/status",
    params={"node": NODE},
    perm=("/nodes/{node}", ["Sys.Audit"]),
    description="Read node status",
    local=True,
)
def node_status(ctx: Ctx, node: str) -> dict[str, Any]:
    require_node(ctx, node)
    if node == ctx.node:
        from corral.cluster.hostinfo import host_status

        status = host_status(ctx.data_dir)
    else:
        if ctx.store.get(keys.node_alive(node)) is None:
            raise Unavailable(f"node '{node}' is offline")
        status = ctx.store.get_value(keys.node_status(node), {}).get("host", {})
    return status


@endpoint("GET", "/nodes/{node}/version", params={"node": NODE}, description="API version.")
def node_version(ctx: Ctx, node: str) -> dict[str, Any]:
    require_node(ctx, node)
    return version(ctx)


@endpoint(
    "GET",
    "/cluster/status",
    perm=("/", ["Sys.Audit"]),
    description="Get cluster status information.",
)
def cluster_status(ctx: Ctx) -> list[dict[str, Any]]:
    view = cluster_view(ctx)
    nodes, infos, cluster = view.nodes(), view.node_infos(), view.cluster()
    quorate = 0 if ctx.store.quorate is False or ctx.store.last_read_stale else 1
    out: list[dict[str, Any]] = [
        {
            "type": "cluster",
            "id": "cluster",
            "name": cluster.get("name", ctx.node),
            "nodes": len(nodes),
            "quorate": quorate,
            "version": cluster.get("version", 1),
        }
    ]
    for i, n in enumerate(nodes, 1):
        info = infos.get(n["node"], {})
        out.append(
            {
                "type": "node",
                "id": f"node/{n['node']}",
                "name": n["node"],
                "nodeid": info.get("nodeid", i),
                "ip": info.get("address", ""),
                "online": 1 if n["status"] == "online" else 0,
                "local": 1 if n["node"] == ctx.node else 0,
                "level": "",
            }
        )
    return out


RESERVATION_TTL = 600
# GET /cluster/nextid holds the ID it answers for its caller this long: scripts
# (Ansible's proxmox modules, most others) ask for the next ID and then create
# with it, and ten of them at once must get ten different IDs.
HOLD_TTL = 60
# One node hands out IDs one at a time (its view then sees each before the next):
# concurrent callers never race each other for the same candidate.
_HANDOUT = threading.Lock()


@endpoint(
    "GET",
    "/cluster/nextid",
    params={
        "vmid": Param(
            "integer", "The (unique) ID of the VM.", optional=True, minimum=100, maximum=999999999
        )
    },
    description="Get next free VMID. The ID answered is held for the caller for "
    f"{HOLD_TTL} s (when it may create guests), so parallel callers get distinct IDs.",
)
def nextid(ctx: Ctx, vmid: int | None = None) -> str:
    if vmid is not None:
        held = ctx.store.get_value(keys.vmid_reservation(vmid))
        if ctx.store.get(keys.guest(vmid)) is not None or (
            held is not None and held.get("user") != ctx.user
        ):
            raise ParamError.one("vmid", f"VM {vmid} already exists")
        return str(vmid)
    if not ctx.can("/vms", ["VM.Allocate"]):
        return str(_first_free(ctx, set()))
    return str(_reserve(ctx, None, HOLD_TTL))


def _first_free(ctx: Ctx, skip: set[int]) -> int:
    view = cluster_view(ctx)
    used = view.vmids() | skip
    candidate = 100
    while candidate in used:
        candidate += 1
    return candidate


def _reserve(ctx: Ctx, vmid: int | None, ttl: int) -> int:
    """Reserve `vmid` (or the first free ID) for the caller under a lease of `ttl` s."""
    lease = ctx.store.lease_grant(ttl)
    record = {"user": ctx.user, "until": int(time.time()) + ttl}
    taken: set[int] = set()  # seen taken by the store, not yet by the view
    with _HANDOUT:
        for _ in range(100):
            candidate = vmid if vmid is not None else _first_free(ctx, taken)
            ok = ctx.store.txn(
                [
                    ("version", keys.guest(candidate), "==", 0),
                    ("version", keys.vmid_reservation(candidate), "==", 0),
                ],
                [("put", keys.vmid_reservation(candidate), record, lease)],
            )
            if ok:
                return candidate
            if vmid is not None:
                break
            taken.add(candidate)
    ctx.store.lease_revoke(lease)
    if vmid is not None:
        raise Conflict(f"VM {vmid} already exists or is reserved")
    raise Conflict("could not reserve a VMID: too much contention")


@endpoint(
    "POST",
    "/cluster/nextid",
    params={
        "vmid": Param(
            "integer",
            "Reserve this VMID instead of the next free one.",
            optional=True,
            minimum=100,
            maximum=999999999,
        )
    },
    perm=("/vms", ["VM.Allocate"]),
    description="Reserve a VMID atomically (corral extension): it is yours for 10 minutes "
    "or until you create a guest with it.",
)
def reserve_nextid(ctx: Ctx, vmid: int | None = None) -> str:
    return str(_reserve(ctx, vmid, RESERVATION_TTL))


RESOURCE_TYPES = ("vm", "storage", "node", "sdn", "pool")


@endpoint(
    "GET",
    "/cluster/resources",
    params={"type": Param("string", "Resource type.", optional=True, enum=RESOURCE_TYPES)},
    description="Resources index (cluster wide).",
)
def resources(ctx: Ctx, type: str | None = None) -> list[Any]:
    # Rows come from the node's in-memory view, serialized once (orjson Fragments).
    view = cluster_view(ctx)
    out: list[Any] = []
    # HA states (pve_ha_state reads `hastate` here) from the view too, not etcd.
    held = view.kv(HA_MANAGER_STATUS)
    manager: dict[str, Any] = held[1] if held is not None else {}
    if type in (None, "node"):
        ha_nodes = manager.get("node_status", {})
        out.extend(
            {**n, "hastate": ha_nodes[n["node"]]} if n["node"] in ha_nodes else n
            for n in view.nodes()
            if ctx.can(f"/nodes/{n['node']}", ["Sys.Audit"])
        )
    if type in (None, "storage"):
        privs = ["Datastore.Audit", "Datastore.AllocateSpace"]
        out.extend(
            row
            for sid, row in view.storage_rows()
            if ctx.can(f"/storage/{sid}", privs, any_of=True)
        )
    if type in (None, "vm"):
        every = ctx.can_each_below("/vms/", ["VM.Audit"])
        hastates = ha_status.guest_states_of(view.items(HA_RESOURCES).values(), manager)
        row: Any
        for vmid, row in view.guest_rows():
            if every or (every is None and ctx.can(f"/vms/{vmid}", ["VM.Audit"])):
                if vmid in hastates:  # pve_ha_state reads `hastate` here
                    row = {**(view.guest_row(vmid) or {}), "hastate": hastates[vmid]}
                out.append(row)
    for provider in RESOURCE_PROVIDERS:
        out.extend(provider(ctx, type))
    return out


# Other modules add rows of other kinds here (pools, sdn...): fn(ctx, type) -> rows.
RESOURCE_PROVIDERS: list[Any] = []
