"""Guest endpoints with Proxmox's paths, registered once for `lxc` and `qemu`.

Reads come from etcd (records) and the nodes' live status documents; writes
validate against the driver's declared config keys, change the record with
compare-and-swap and become tasks on the guest's node (corral.cluster.guests).
"""

from __future__ import annotations

import time
from typing import Any

from corral.cluster import guests, keys, placement
from corral.cluster.errors import Conflict, NotFound, ParamError, Unavailable
from corral.cluster.guest_driver import GuestDriver
from corral.cluster.schema import DIGEST, NODE, VMID, Param, parse_size
from corral.web import api_core
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node

TYPES = ("lxc", "qemu")
KIND = {"lxc": "CT", "qemu": "VM"}
CONFIG_WAIT = 60.0
AUTO_NODE = "auto"  # the node name that means "pick one" at creation

# Privileges for config keys by family (Proxmox checks them per key).
_KEY_PRIVS = [
    (("memory", "swap", "balloon", "shares"), "VM.Config.Memory"),
    (("cores", "sockets", "vcpus", "cpu", "cpulimit", "cpuunits", "numa"), "VM.Config.CPU"),
    (("net",), "VM.Config.Network"),
    (("rootfs", "mp", "scsi", "virtio", "sata", "ide", "efidisk", "unused"), "VM.Config.Disk"),
    (("ci", "ipconfig", "sshkeys", "nameserver", "searchdomain"), "VM.Config.Cloudinit"),
]


def _priv_for(key: str) -> str:
    for prefixes, priv in _KEY_PRIVS:
        if any(key == p or (key.startswith(p) and key[len(p) :].isdigit()) for p in prefixes):
            return priv
    return "VM.Config.Options"


def driver_for(ctx: Ctx, type: str) -> GuestDriver:
    drivers = ctx.services.get("drivers") or {}
    driver = drivers.get(type)
    if driver is None:
        from corral.cluster import registry

        reason = registry.UNAVAILABLE.get(registry.GUEST_DRIVERS, {}).get(type, "not installed")
        raise Unavailable(f"{type} guests are not available on this node: {reason}")
    return driver


def _record(ctx: Ctx, type: str, node: str, vmid: int) -> dict[str, Any]:
    require_node(ctx, node)
    return guests.get_record(ctx.store, vmid, type=type, node=node)


def _live(ctx: Ctx, rec: dict[str, Any]) -> dict[str, Any]:
    doc = ctx.store.get_value(keys.guest_status(rec["node"])) or {}
    return doc.get(str(rec["vmid"]), {})


def _summary(rec: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    cfg = rec["config"]
    name = cfg.get("hostname") or cfg.get("name") or f"{KIND[rec['type']]}{rec['vmid']}"
    out: dict[str, Any] = {
        "vmid": rec["vmid"],
        "name": name,
        "type": rec["type"],
        "status": live.get("status", "unknown"),
        "lock": rec.get("lock") or "",
        "tags": cfg.get("tags", ""),
    }
    for field in (
        "cpu",
        "cpus",
        "mem",
        "maxmem",
        "disk",
        "maxdisk",
        "netin",
        "netout",
        "diskread",
        "diskwrite",
        "uptime",
        "pid",
        "qmpstatus",
        "maxswap",
        "swap",
    ):
        if field in live:
            out[field] = live[field]
    out.setdefault("maxmem", int(cfg.get("memory", 512)) * 1024 * 1024)
    if rec.get("lock"):
        out["lock"] = rec["lock"]
    else:
        out.pop("lock")
    if cfg.get("template"):
        out["template"] = 1
    return out


def _wait(ctx: Ctx, upid: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = ctx.tasks.status(upid)
        if status["status"] == "stopped":
            return status
        if time.monotonic() > deadline:
            raise Unavailable(f"task {upid} did not finish within {timeout:.0f} s")
        time.sleep(0.02)


def _config_schema_check(
    ctx: Ctx, type: str, raw: dict[str, Any], *, partial: bool
) -> dict[str, Any]:
    return driver_for(ctx, type).config_schema().validate(raw, partial=partial)


def register(type: str) -> None:
    base = f"/nodes/{{node}}/{type}"
    one = f"{base}/{{vmid}}"
    kind = KIND[type]
    task = guests.TASK_TYPES[type]

    @endpoint("GET", base, params={"node": NODE}, description=f"{kind} index (per node).")
    def list_guests(ctx: Ctx, node: str) -> list[dict[str, Any]]:
        require_node(ctx, node)
        doc = ctx.store.get_value(keys.guest_status(node)) or {}
        out = []
        for rec in guests.local_guests(ctx.store, node):
            if rec["type"] == type and ctx.can(f"/vms/{rec['vmid']}", ["VM.Audit"]):
                out.append(_summary(rec, doc.get(str(rec["vmid"]), {})))
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
        if node == AUTO_NODE:
            # corral extension: POST /nodes/auto/{lxc,qemu} places the guest by free resources.
            try:
                memory = int(raw.get("memory") or 512) << 20
            except (TypeError, ValueError):
                raise ParamError.one("memory", f"invalid memory '{raw.get('memory')}'") from None
            node = placement.choose_node(ctx.store, memory=memory)
        require_node(ctx, node)
        if ctx.store.get(keys.node_alive(node)) is None:
            raise Unavailable(f"node '{node}' is offline")
        valid = _config_schema_check(ctx, type, raw, partial=False)
        config = {k: v for k, v in valid.items() if k not in guests.CREATE_ONLY}
        params = {k: v for k, v in valid.items() if k in guests.CREATE_ONLY}
        for key in config:
            if _priv_for(key) != "VM.Config.Options":
                ctx.check(f"/vms/{vmid}", [_priv_for(key)])
        check = getattr(driver_for(ctx, type), "check_create", None)
        if check is not None:
            check(vmid, config, params=params, volumes=ctx.services.get("volumes"))
        record = {
            "vmid": vmid,
            "type": type,
            "node": node,
            "config": config,
            "pending": {},
            "pending_delete": [],
            "lock": "create",
            "created": int(time.time()),
        }
        reservation = ctx.store.get(keys.vmid_reservation(vmid))
        compare: list[tuple[Any, ...]] = [("version", keys.guest(vmid), "==", 0)]
        if reservation is None:
            compare.append(("version", keys.vmid_reservation(vmid), "==", 0))
        elif reservation.value.get("user") != ctx.user:
            raise Conflict(f"VM {vmid} is reserved by {reservation.value.get('user')}")
        else:
            compare.append(("mod", keys.vmid_reservation(vmid), "==", reservation.mod_revision))
        ok = ctx.store.txn(
            compare, [("put", keys.guest(vmid), record), ("delete", keys.vmid_reservation(vmid))]
        )
        if not ok:
            raise (
                Conflict(f"{kind} {vmid} already exists")
                if ctx.store.get(keys.guest(vmid))
                else Conflict(f"VM {vmid} is reserved")
            )
        return ctx.submit(
            node=node,
            type=task["create"],
            id=str(vmid),
            args={"vmid": vmid, "params": params, "start": start},
            serial=guests.serial(vmid),
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
        rec = _record(ctx, type, node, vmid)
        guests.check_lock(rec)
        if rec["config"].get("protection"):
            raise Conflict(f"can't remove {kind} {vmid} - protection mode enabled")
        live = _live(ctx, rec)
        if live.get("status") == "running" and not force:
            raise Conflict(f"{kind} {vmid} is running - destroy failed")
        if force and live.get("status") == "running":
            ctx.submit(
                node=node,
                type=task["stop"],
                id=str(vmid),
                args={"vmid": vmid},
                serial=guests.serial(vmid),
            )
        return ctx.submit(
            node=node,
            type=task["destroy"],
            id=str(vmid),
            args={"vmid": vmid},
            serial=guests.serial(vmid),
        )

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
        if snapshot:
            raise NotFound(f"snapshot '{snapshot}' does not exist")
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
        ctx.check(
            f"/vms/{vmid}",
            [
                "VM.Config.Options",
                "VM.Config.Memory",
                "VM.Config.CPU",
                "VM.Config.Disk",
                "VM.Config.Network",
                "VM.Config.Cloudinit",
                "VM.Config.CDROM",
            ],
            any_of=True,
        )

    def change_config(
        ctx: Ctx,
        node: str,
        vmid: int,
        digest: str | None,
        delete: str | None,
        revert: str | None,
        raw: dict[str, Any],
    ) -> str | None:
        rec = _record(ctx, type, node, vmid)
        raw = {k: v for k, v in raw.items() if k != "skiplock"}
        schema = driver_for(ctx, type).config_schema()
        changes = schema.validate(raw, partial=True)
        bad_create = sorted(set(changes) & guests.CREATE_ONLY)
        if bad_create:
            raise ParamError({k: "only allowed at creation" for k in bad_create})
        deletes = [k for k in (delete or "").replace(";", ",").split(",") if k.strip()]
        reverts = [k for k in (revert or "").replace(";", ",").split(",") if k.strip()]
        errors = {}
        for key in deletes + reverts:
            if key not in schema.props:
                errors[key] = "unknown setting"
        for key in deletes:
            if key in changes:
                errors[key] = "can't set and delete the same option"
        if errors:
            raise ParamError(errors)
        for key in [*changes, *deletes]:
            ctx.check(f"/vms/{vmid}", [_priv_for(key)])
        if not changes and not deletes and not reverts:
            raise ParamError(message="no options specified")
        live = _live(ctx, rec)
        running = live.get("status") in ("running", "paused")

        def apply(r: dict[str, Any]) -> dict[str, Any]:
            if digest and guests.digest(r["config"]) != digest.lower():
                raise Conflict(
                    "detected modified configuration - file changed by other user? Try again."
                )
            guests.check_lock(r)
            pending = dict(r.get("pending", {}))
            pending_delete = list(r.get("pending_delete", []))
            for key in reverts:
                pending.pop(key, None)
                if key in pending_delete:
                    pending_delete.remove(key)
            if running:
                pending.update(changes)
                for key in deletes:
                    pending.pop(key, None)
                    if key not in pending_delete and key in r["config"]:
                        pending_delete.append(key)
            else:
                r["config"] = {**r["config"], **changes}
                for key in deletes:
                    r["config"].pop(key, None)
            r["pending"], r["pending_delete"] = pending, pending_delete
            return r

        guests.update_record(ctx.store, vmid, apply)
        if not running:
            return None
        return ctx.submit(
            node=node,
            type=task["config"],
            id=str(vmid),
            args={"vmid": vmid},
            serial=guests.serial(vmid),
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
            status = _wait(ctx, upid, CONFIG_WAIT)
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
        if node == ctx.node and rec.get("lock") != "create":
            live = driver_for(ctx, type).status(vmid, rec["config"])
        else:
            live = _live(ctx, rec)
        out = _summary(rec, live)
        out.update({k: v for k, v in live.items() if k not in out and k != "time"})
        if rec.get("lock"):
            out["lock"] = rec["lock"]
        out["ha"] = {"managed": 0}
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
        rec = _record(ctx, type, node, vmid)
        if digest and guests.digest(rec["config"]) != digest.lower():
            raise Conflict(
                "detected modified configuration - file changed by other user? Try again."
            )
        guests.check_lock(rec)
        if disk not in rec["config"]:
            raise ParamError.one("disk", f"disk '{disk}' does not exist")
        volumes = ctx.services.get("volumes")
        current = _disk_size(rec["config"][disk], volumes)
        grow = size.startswith("+")
        try:
            amount = parse_size(size.lstrip("+"), default_unit="G")
        except ValueError as err:
            raise ParamError.one("size", str(err)) from None
        new = current + amount if grow else amount
        if new < current:
            raise ParamError.one("size", "shrinking disks is not supported")
        if new == current:
            raise ParamError.one("size", "the disk already has this size")
        return ctx.submit(
            node=node,
            type=task["resize"],
            id=str(vmid),
            args={"vmid": vmid, "disk": disk, "size": new},
            serial=guests.serial(vmid),
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
            return {"user": ctx.user, "upid": "", **info}


def _disk_size(value: Any, volumes: Any) -> int:
    text = str(value)
    for part in text.split(","):
        if part.startswith("size="):
            try:
                return parse_size(part[5:], default_unit="G")
            except ValueError:
                break
    volid = text.split(",")[0]
    if volumes is not None and ":" in volid:
        return int(volumes.size(volid))
    raise ParamError.one("disk", "cannot determine the disk's current size")


def _register_op(type: str, one: str, op: str, extra: dict[str, Param]) -> None:
    kind = KIND[type]
    task = guests.TASK_TYPES[type]

    @endpoint(
        "POST",
        f"{one}/status/{op}",
        params={"node": NODE, "vmid": VMID, **extra},
        perm=("/vms/{vmid}", ["VM.PowerMgmt"]),
        description=f"{op.capitalize()} the {kind}.",
    )
    def run(ctx: Ctx, node: str, vmid: int, **params: Any) -> str:
        rec = _record(ctx, type, node, vmid)
        if op != "stop" or not params.get("skiplock"):
            guests.check_lock(rec)
        if params.get("skiplock") and ctx.identity.userid != "root@pam":
            raise ParamError.one("skiplock", "Only root may use this option.")
        args = {"vmid": vmid, **{k: v for k, v in params.items() if v is not None}}
        return ctx.submit(
            node=node, type=task[op], id=str(vmid), args=args, serial=guests.serial(vmid)
        )

    run.__name__ = f"{type}_{op}"


for _t in TYPES:
    register(_t)


def _resources(ctx: Ctx, type: str | None) -> list[dict[str, Any]]:
    if type not in (None, "vm"):
        return []
    live = guests.live_status(ctx.store)
    out = []
    for kv in ctx.store.range(keys.GUESTS):
        rec = kv.value
        if not ctx.can(f"/vms/{rec['vmid']}", ["VM.Audit"]):
            continue
        row = _summary(rec, live.get(str(rec["vmid"]), {}))
        row["id"] = f"{rec['type']}/{rec['vmid']}"
        row["node"] = rec["node"]
        out.append(row)
    return out


api_core.RESOURCE_PROVIDERS.append(_resources)
