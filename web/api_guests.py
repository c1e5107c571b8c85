"""Guest endpoints with Proxmox's paths, registered once for `lxc` and `qemu`.

Reads come from etcd (records) and the nodes' live status documents; writes
validate against the driver's declared config keys, change the record with
compare-and-swap and become tasks on the guest's node (corral.cluster.guests).
"""

from __future__ import annotations

from typing import Any

from corral.cluster import guests, keys, snapshots
from corral.cluster.cluster_view import guest_summary
from corral.cluster.errors import Conflict, Unavailable
from corral.cluster.guest_driver import GuestDriver
from corral.cluster.guest_service import CONFIG_PRIVS, GuestService
from corral.cluster.ha import status as ha_status
from corral.cluster.schema import DIGEST, NODE, VMID, Param
from corral.web import api_backup
from corral.web.api import Ctx, endpoint
from corral.web.api_core import cluster_view, require_node

TYPES = ("lxc", "qemu")
KIND = {"lxc": "CT", "qemu": "VM"}
CONFIG_WAIT = 60.0
AUTO_NODE = "auto"  # the node name that means "pick one" at creation


def service(ctx: Ctx) -> GuestService:
    """The node's guest service (every guest rule lives there, not here)."""
    found = ctx.services.get("guest_service")
    if isinstance(found, GuestService):
        return found
    return GuestService(
        ctx.store,
        ctx.tasks,
        node=ctx.node,
        drivers=ctx.services.get("drivers") or {},
        volumes=ctx.services.get("volumes"),
        services=ctx.services,
    )


def driver_for(ctx: Ctx, type: str) -> GuestDriver:
    return service(ctx).driver(type)


def _authorize(ctx: Ctx, vmid: int) -> Any:
    def check(privs: set[str]) -> None:
        for priv in sorted(privs):
            ctx.check(f"/vms/{vmid}", [priv])

    return check


def _record(ctx: Ctx, type: str, node: str, vmid: int) -> dict[str, Any]:
    require_node(ctx, node)
    return guests.get_record(ctx.store, vmid, type=type, node=node)


_summary = guest_summary  # one row shape for guest lists and /cluster/resources


def _register_lifecycle(type: str) -> None:
    """Guest lists, create, index, destroy."""
    base = f"/nodes/{{node}}/{type}"
    one = f"{base}/{{vmid}}"
    kind = KIND[type]

    @endpoint("GET", base, params={"node": NODE}, description=f"{kind} index (per node).")
    def list_guests(ctx: Ctx, node: str) -> list[dict[str, Any]]:
        require_node(ctx, node)
        # From the node's view, current as of the call as /cluster/resources is: etcd
        # has no per-node index, so reading it meant every guest record of the cluster.
        view = cluster_view(ctx)
        out = []
        for rec in view.guests():
            if rec["node"] != node or rec["type"] != type:
                continue
            if ctx.can(f"/vms/{rec['vmid']}", ["VM.Audit"]):
                held = view.kv(keys.guest_status(node, rec["vmid"]))
                out.append(_summary(rec, held[1] if held is not None else {}))
        return sorted(out, key=lambda r: r["vmid"])

    def create_perm(ctx: Ctx, **params: Any) -> None:
        ctx.check(f"/vms/{params['vmid']}", ["VM.Allocate"])

    @endpoint(
        "POST",
        base,
        params={
            "node": NODE,
            "vmid": VMID,
            "start": Param(
                "boolean",
                f"Start the {kind} after its creation finished.",
                optional=True,
                default=0,
            ),
            "pool": Param("string", "Add the guest to the specified pool.", optional=True),
            "digest": DIGEST,
            **api_backup.restore_params(type),
        },
        perm=create_perm,
        description=f"Create a {kind}.",
        additional=True,
    )
    def create(
        ctx: Ctx,
        node: str,
        vmid: int,
        start: int = 0,
        pool: str | None = None,
        digest: str | None = None,
        **raw: Any,
    ) -> str:
        if api_backup.is_restore(type, raw):  # from a backup archive (corral.cluster.restore)
            return api_backup.restore_request(ctx, type, node, vmid, raw, start=bool(start))
        api_backup.drop_restore_params(type, raw)
        # corral extension: POST /nodes/auto/{lxc,qemu} places the guest by free resources.
        if node != AUTO_NODE:
            require_node(ctx, node)
        return service(ctx).create(
            type,
            vmid,
            raw,
            user=ctx.user,
            node=None if node == AUTO_NODE else node,
            start=bool(start),
            authorize=_authorize(ctx, vmid),
        )

    @endpoint(
        "GET",
        one,
        params={"node": NODE, "vmid": VMID},
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description="Directory index",
    )
    def index(ctx: Ctx, node: str, vmid: int) -> list[dict[str, str]]:
        _record(ctx, type, node, vmid)
        subs = ["config", "pending", "status", "resize"]
        subs += ["interfaces"] if type == "lxc" else ["vncproxy"]
        return [{"subdir": s} for s in subs]

    @endpoint(
        "DELETE",
        one,
        params={
            "node": NODE,
            "vmid": VMID,
            "purge": Param(
                "boolean",
                "Remove the guest from all related configurations.",
                optional=True,
                default=0,
            ),
            "force": Param("boolean", "Force destroy, even if running.", optional=True, default=0),
            "destroy-unreferenced-disks": Param(
                "boolean", "Also destroy unreferenced disks.", optional=True, default=1
            ),
            "skiplock": Param(
                "boolean",
                "Ignore locks - only root is allowed to use this option.",
                optional=True,
                default=0,
            ),
        },
        perm=("/vms/{vmid}", ["VM.Allocate"]),
        description=f"Destroy the {kind} (also delete all used/owned volumes).",
    )
    def destroy(ctx: Ctx, node: str, vmid: int, force: int = 0, **_: Any) -> str:
        require_node(ctx, node)
        upid = service(ctx).destroy(vmid, user=ctx.user, force=bool(force), type=type, node=node)
        return _settled(ctx, upid)


def _register_config(type: str) -> None:
    """Config, pending changes."""
    base = f"/nodes/{{node}}/{type}"
    one = f"{base}/{{vmid}}"
    kind = KIND[type]

    @endpoint(
        "GET",
        f"{one}/config",
        params={
            "node": NODE,
            "vmid": VMID,
            "current": Param(
                "boolean",
                "Get current values (instead of pending values).",
                optional=True,
                default=0,
            ),
            "snapshot": Param("string", "Fetch config values from given snapshot.", optional=True),
        },
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description=f"Get {kind} configuration.",
    )
    def get_config(
        ctx: Ctx, node: str, vmid: int, current: int = 0, snapshot: str | None = None
    ) -> dict[str, Any]:
        rec = _record(ctx, type, node, vmid)
        if snapshot:  # the config as the snapshot keeps it (corral.cluster.snapshots)
            config = snapshots.snapshot_config(rec, snapshot)
        else:
            config = dict(rec["config"] if current else guests.merged_config(rec))
        schema = driver_for(ctx, type).config_schema()
        for key, param in schema.props.items():
            if param.secret and key in config:
                config[key] = "**********"
        config["digest"] = guests.digest(rec["config"])
        if rec.get("lock"):
            config["lock"] = rec["lock"]
        return config

    config_params = {
        "node": NODE,
        "vmid": VMID,
        "digest": DIGEST,
        "delete": Param(
            "string",
            "A list of settings you want to delete.",
            optional=True,
            format="pve-configid-list",
        ),
        "revert": Param(
            "string", "Revert a pending change.", optional=True, format="pve-configid-list"
        ),
        "skiplock": Param("boolean", "Ignore locks.", optional=True, default=0),
    }

    def config_perm(ctx: Ctx, vmid: int, **_: Any) -> None:
        ctx.check(f"/vms/{vmid}", list(CONFIG_PRIVS), any_of=True)

    def change_config(
        ctx: Ctx,
        node: str,
        vmid: int,
        digest: str | None,
        delete: str | None,
        revert: str | None,
        raw: dict[str, Any],
    ) -> str | None:
        require_node(ctx, node)
        return service(ctx).change_config(
            vmid,
            raw,
            user=ctx.user,
            delete=delete,
            revert=revert,
            digest=digest,
            type=type,
            node=node,
            authorize=_authorize(ctx, vmid),
        )

    @endpoint(
        "PUT",
        f"{one}/config",
        params=dict(config_params),
        perm=config_perm,
        additional=True,
        description=f"Set {kind} options (synchronous; running guests take what they "
        "can live, the rest stays pending).",
    )
    def put_config(
        ctx: Ctx,
        node: str,
        vmid: int,
        digest: str | None = None,
        delete: str | None = None,
        revert: str | None = None,
        **raw: Any,
    ) -> None:
        upid = change_config(ctx, node, vmid, digest, delete, revert, raw)
        if upid is not None:
            status = service(ctx).wait(upid, CONFIG_WAIT)
            if status.get("exitstatus") != "OK":
                raise Conflict(f"applying the change failed: {status.get('exitstatus')}")

    if type == "qemu":

        @endpoint(
            "POST",
            f"{one}/config",
            params=dict(config_params),
            perm=config_perm,
            additional=True,
            description="Set virtual machine options (asynchronous API).",
        )
        def post_config(
            ctx: Ctx,
            node: str,
            vmid: int,
            digest: str | None = None,
            delete: str | None = None,
            revert: str | None = None,
            **raw: Any,
        ) -> str | None:
            return change_config(ctx, node, vmid, digest, delete, revert, raw)

    @endpoint(
        "GET",
        f"{one}/pending",
        params={"node": NODE, "vmid": VMID},
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description="Get the configuration with both current and pending values.",
    )
    def pending(ctx: Ctx, node: str, vmid: int) -> list[dict[str, Any]]:
        rec = _record(ctx, type, node, vmid)
        out = []
        for key in sorted(set(rec["config"]) | set(rec.get("pending", {}))):
            row: dict[str, Any] = {"key": key}
            if key in rec["config"]:
                row["value"] = rec["config"][key]
            if key in rec.get("pending", {}):
                row["pending"] = rec["pending"][key]
            if key in rec.get("pending_delete", []):
                row["delete"] = 1
            out.append(row)
        return out


def _register_power(type: str) -> None:
    """Status and power operations."""
    base = f"/nodes/{{node}}/{type}"
    one = f"{base}/{{vmid}}"
    kind = KIND[type]

    @endpoint(
        "GET",
        f"{one}/status",
        params={"node": NODE, "vmid": VMID},
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description="Directory index",
    )
    def status_index(ctx: Ctx, node: str, vmid: int) -> list[dict[str, str]]:
        _record(ctx, type, node, vmid)
        ops = ["current", "start", "stop", "shutdown", "reboot", "suspend", "resume"]
        return [{"subdir": s} for s in ops + (["reset"] if type == "qemu" else [])]

    @endpoint(
        "GET",
        f"{one}/status/current",
        params={"node": NODE, "vmid": VMID},
        perm=("/vms/{vmid}", ["VM.Audit"]),
        description=f"Get current {kind} status.",
        local=True,
    )
    def status_current(ctx: Ctx, node: str, vmid: int) -> dict[str, Any]:
        rec = _record(ctx, type, node, vmid)
        live = service(ctx).current(rec)
        out = _summary(rec, live)
        out.update({k: v for k, v in live.items() if k not in out and k != "time"})
        if rec.get("lock"):
            out["lock"] = rec["lock"]
        out["ha"] = ha_status.guest_ha(ctx.store, type, vmid)
        return out

    ops: dict[str, dict[str, Param]] = {
        "start": {
            "skiplock": Param("boolean", "Ignore locks.", optional=True, default=0),
            "timeout": Param("integer", "Wait maximal timeout seconds.", optional=True, minimum=0),
        },
        "stop": {
            "skiplock": Param("boolean", "Ignore locks.", optional=True, default=0),
            "timeout": Param("integer", "Wait maximal timeout seconds.", optional=True, minimum=0),
            "overrule-shutdown": Param(
                "boolean", "Abort any running shutdown task.", optional=True, default=0
            ),
        },
        "shutdown": {
            "timeout": Param(
                "integer", "Wait maximal timeout seconds.", optional=True, minimum=0, default=60
            ),
            "forceStop": Param("boolean", "Make sure the guest stops.", optional=True, default=0),
        },
        "reboot": {
            "timeout": Param(
                "integer",
                "Wait maximal timeout seconds for the shutdown.",
                optional=True,
                minimum=0,
                default=60,
            )
        },
        "suspend": {},
        "resume": {},
    }
    if type == "qemu":
        ops["reset"] = {"skiplock": Param("boolean", "Ignore locks.", optional=True, default=0)}

    for op, extra in ops.items():
        _register_op(type, one, op, extra)


def _register_disks(type: str) -> None:
    """Disk resize, container interfaces, VM consoles."""
    one = f"/nodes/{{node}}/{type}/{{vmid}}"

    @endpoint(
        "PUT",
        f"{one}/resize",
        params={
            "node": NODE,
            "vmid": VMID,
            "digest": DIGEST,
            "disk": Param("string", "The disk you want to resize.", pattern=r"[a-z]+\d*"),
            "size": Param(
                "string",
                "The new size. With the '+' sign the value is added to the "
                "actual size of the volume and without it, the value is taken as an "
                "absolute one. Shrinking disk size is not supported.",
                pattern=r"\+?\d+(\.\d+)?[KMGT]?",
            ),
        },
        perm=("/vms/{vmid}", ["VM.Config.Disk"]),
        description="Resize a volume.",
    )
    def resize(
        ctx: Ctx, node: str, vmid: int, disk: str, size: str, digest: str | None = None
    ) -> str:
        require_node(ctx, node)
        return service(ctx).resize(
            vmid, disk, size, user=ctx.user, digest=digest, type=type, node=node
        )

    if type == "lxc":

        @endpoint(
            "GET",
            f"{one}/interfaces",
            params={"node": NODE, "vmid": VMID},
            perm=("/vms/{vmid}", ["VM.Audit"]),
            description="Get IP addresses of the specified container interface.",
            local=True,
        )
        def interfaces(ctx: Ctx, node: str, vmid: int) -> list[dict[str, Any]]:
            rec = _record(ctx, type, node, vmid)
            if node != ctx.node:
                raise Unavailable("interfaces are read on the container's own node")
            return driver_for(ctx, type).interfaces(vmid, rec["config"])
    else:

        @endpoint(
            "POST",
            f"{one}/vncproxy",
            params={
                "node": NODE,
                "vmid": VMID,
                "websocket": Param("boolean", "Prepare for websocket upgrade.", optional=True),
                "generate-password": Param(
                    "boolean",
                    "Generate a random password to use as ticket.",
                    optional=True,
                    default=0,
                ),
            },
            perm=("/vms/{vmid}", ["VM.Console"]),
            description="Creates a TCP VNC proxy connection.",
            local=True,
        )
        def vncproxy(ctx: Ctx, node: str, vmid: int, **_: Any) -> dict[str, Any]:
            rec = _record(ctx, type, node, vmid)
            if node != ctx.node:
                raise Unavailable("consoles are opened on the VM's own node")
            info = driver_for(ctx, type).console(vmid, rec["config"])
            from corral.web.api_console import register_vnc  # vncwebsocket's session

            upid = register_vnc(ctx, type, vmid, info)  # a running `vncproxy` task
            return {"user": ctx.user, **info, "upid": upid}


def register(type: str) -> None:
    """Every guest endpoint of `type`, under /nodes/{node}/{type}."""
    for part in (_register_lifecycle, _register_config, _register_power, _register_disks):
        part(type)


def _settled(ctx: Ctx, upid: str) -> str:
    """The UPID, answered once its task has ended when that is quick (Tasks.settle):
    clients that poll once a second (Ansible, proxmoxer) then see OK at their first
    poll. The task is recorded and runs the same either way. Power operations and
    destroy only: a create unpacks a template or allocates disks (seldom quick)."""
    ctx.tasks.settle(upid)
    return upid


def _register_op(type: str, one: str, op: str, extra: dict[str, Param]) -> None:
    kind = KIND[type]

    @endpoint(
        "POST",
        f"{one}/status/{op}",
        params={"node": NODE, "vmid": VMID, **extra},
        perm=("/vms/{vmid}", ["VM.PowerMgmt"]),
        description=f"{op.capitalize()} the {kind}.",
    )
    def run(ctx: Ctx, node: str, vmid: int, **params: Any) -> str:
        require_node(ctx, node)
        skiplock = bool(params.pop("skiplock", 0))
        upid = service(ctx).power(
            op, vmid, user=ctx.user, type=type, node=node, skiplock=skiplock, **params
        )
        return _settled(ctx, upid)

    run.__name__ = f"{type}_{op}"


for _t in TYPES:
    register(_t)
