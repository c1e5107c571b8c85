"""Guest operations as one service: what every caller of a guest goes through.

The HTTP API (corral.web.api_guests, api_migrate), the CLI, HA and backup jobs
call these methods; none of them writes a guest record or submits a guest
task by itself. Each method checks the request against the cluster's state
(record, lock, digest, live status, driver capabilities), records the intent
with compare-and-swap, and submits a task to the guest's node, returning its
UPID. The task handlers (corral.cluster.guests) run there and call the driver.

    svc = GuestService(store, tasks, node="node1", drivers=drivers, volumes=volumes)
    upid = svc.start(105, user="root@pam")
    svc.wait(upid)

Every operation is addressed by VMID. `type` and `node`, when given (the API
does, from its path), must match the record: NotFound otherwise, as Proxmox.
Errors are CorralError subclasses with their HTTP status: ParamError (400,
naming the parameter), NotFound, Conflict (lock held, digest changed, already
exists), Unavailable (node offline, driver missing). Access control is the
caller's: methods that change config take `authorize`, called with the
privileges the change needs before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

from corral.cluster import (
    guests,
    keys,
    migration,
    placement,
    recovery,  # noqa: F401 - registers restart recovery of guest tasks
    registry,
)
from corral.cluster.cluster_view import local_value
from corral.cluster.errors import Conflict, CorralError, NotFound, ParamError, Unavailable
from corral.cluster.guest_driver import GuestDriver, VolumeAccess
from corral.cluster.guest_service_copies import CopyOperations
from corral.cluster.guest_volumes import volumes_in
from corral.cluster.schema import parse_size
from corral.cluster.store_api import StoreAPI
from corral.cluster.task_client import Tasks

Authorize = Callable[[set[str]], None]

ROOT = "root@pam"
POWER_OPS = ("start", "stop", "shutdown", "reboot", "suspend", "resume", "reset")
DIGEST_CHANGED = "detected modified configuration - file changed by other user? Try again."

# Privileges for config keys by family (Proxmox checks them per key).
_KEY_PRIVS = [
    (("memory", "swap", "balloon", "shares"), "VM.Config.Memory"),
    (("cores", "sockets", "vcpus", "cpu", "cpulimit", "cpuunits", "numa"), "VM.Config.CPU"),
    (("net",), "VM.Config.Network"),
    (("rootfs", "mp", "scsi", "virtio", "sata", "ide", "efidisk", "unused"), "VM.Config.Disk"),
    (("ci", "ipconfig", "sshkeys", "nameserver", "searchdomain"), "VM.Config.Cloudinit"),
]
CONFIG_PRIVS = (
    "VM.Config.Options",
    "VM.Config.Memory",
    "VM.Config.CPU",
    "VM.Config.Disk",
    "VM.Config.Network",
    "VM.Config.Cloudinit",
    "VM.Config.CDROM",
)


def privilege_for(key: str) -> str:
    """The privilege that changing config key `key` needs."""
    for prefixes, priv in _KEY_PRIVS:
        if any(key == p or (key.startswith(p) and key[len(p) :].isdigit()) for p in prefixes):
            return priv
    return "VM.Config.Options"


def _split_list(text: str | None) -> list[str]:
    return [k.strip() for k in (text or "").replace(";", ",").split(",") if k.strip()]


def _accept(_rec: dict[str, Any]) -> None:
    """A check that refuses nothing (checked_record for a plain read)."""


class GuestService(CopyOperations):
    """Create, configure, power, migrate and destroy guests; find who uses a volume;
    snapshots, clones and templates (CopyOperations).

    Cheap to construct (it holds references only); thread-safe, as the store
    and the task queue are.
    """

    def __init__(
        self,
        store: StoreAPI,
        tasks: Tasks,
        *,
        node: str,
        drivers: Mapping[str, GuestDriver] | None = None,
        volumes: VolumeAccess | None = None,
        now: Callable[[], float] | None = None,
        services: MutableMapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        # The node's services: its in-memory view serves the checks of a power
        # operation without an etcd read (see checked_record).
        self.services = services
        self.tasks = tasks
        self.node = node  # the node this service runs on (its drivers are local)
        self.drivers: Mapping[str, GuestDriver] = drivers or {}
        self.volumes = volumes
        self.now = now or store.clock.time  # the store's clock: virtual in simulations

    # -- reading -------------------------------------------------------------------
    def driver(self, type: str) -> GuestDriver:
        """This node's driver for `type` (Unavailable, with the reason, if it has none)."""
        driver = self.drivers.get(type)
        if driver is None:
            reason = registry.UNAVAILABLE.get(registry.GUEST_DRIVERS, {}).get(type, "not installed")
            raise Unavailable(f"{type} guests are not available on this node: {reason}")
        return driver

    def record(
        self, vmid: int, *, type: str | None = None, node: str | None = None
    ) -> dict[str, Any]:
        """The guest's record; NotFound if absent or not of that type / on that node."""
        return guests.get_record(self.store, vmid, type=type, node=node)

    def checked_record(
        self,
        vmid: int,
        check: Callable[[dict[str, Any]], None],
        *,
        type: str | None = None,
        node: str | None = None,
    ) -> dict[str, Any]:
        """The guest's record, passed through `check` (which raises to refuse), read
        from the node's in-memory view when that holds this process's writes; a
        refusal, a missing guest or a moved one is confirmed on etcd's own record
        first. For checks the task repeats on its node (a power operation's): the
        request then costs no etcd read."""
        rec = local_value(self.services, self.store, keys.guest(vmid))
        if rec is not None and (type is None or rec["type"] == type):
            if node is None or rec["node"] == node:
                try:
                    check(rec)
                    return rec  # type: ignore[no-any-return]
                except CorralError:
                    pass  # said from memory: confirm with the store
        rec = self.record(vmid, type=type, node=node)
        check(rec)
        return rec

    def live(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The guest's figures as its node last published them ({} if none): from the
        node's in-memory view when that holds this process's writes. They are up to
        a round old anyway; the view's lag of milliseconds changes nothing."""
        key = keys.guest_status(rec["node"], rec["vmid"])
        return local_value(self.services, self.store, key) or {}

    def current(self, rec: dict[str, Any]) -> dict[str, Any]:
        """The guest's live figures, fresh from its driver when it is on this node
        (and built), else as its node last published them."""
        if rec["node"] == self.node and rec.get("lock") != "create":
            return self.driver(rec["type"]).status(rec["vmid"], rec["config"])
        return self.live(rec)

    def running(self, rec: dict[str, Any]) -> bool:
        return self.live(rec).get("status") in ("running", "paused")

    def wait(self, upid: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until task `upid` stops; its status. Unavailable after `timeout` s."""
        try:
            return self.tasks.wait(upid, timeout=timeout, poll=0.02)
        except TimeoutError:
            raise Unavailable(f"task {upid} did not finish within {timeout:.0f} s") from None

    # -- create ----------------------------------------------------------------------
    def validate_create(
        self, type: str, raw: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(config keys, create-only parameters) of a create request, validated."""
        valid = self.driver(type).config_schema().validate(dict(raw), partial=False)
        config = {k: v for k, v in valid.items() if k not in guests.CREATE_ONLY}
        params = {k: v for k, v in valid.items() if k in guests.CREATE_ONLY}
        return config, params

    def create(
        self,
        type: str,
        vmid: int,
        raw: Mapping[str, Any],
        *,
        user: str,
        node: str | None = None,
        start: bool = False,
        authorize: Authorize | None = None,
    ) -> str:
        """Record guest `vmid` (locked "create") and queue its creation on `node`.

        `raw` holds config keys and create-only parameters (ostemplate,
        storage, password...). Without `node`, the node with the most free
        memory is chosen. A VMID reserved by `user` (nextid) is taken over;
        one reserved by someone else, or in use, is a Conflict.
        """
        if node is None:
            try:
                memory = int(raw.get("memory") or 512) << 20
            except (TypeError, ValueError):
                raise ParamError.one("memory", f"invalid memory '{raw.get('memory')}'") from None
            node = placement.choose_node(self.store, memory=memory)
        if self.store.get(keys.node_alive(node)) is None:
            raise Unavailable(f"node '{node}' is offline")
        config, params = self.validate_create(type, raw)
        if authorize is not None:
            authorize({p for p in map(privilege_for, config) if p != "VM.Config.Options"})
        self.driver(type).check_create(vmid, config, params=params, volumes=self.volumes)
        record = guests.new_record(type, vmid, node, config, now=self.now())
        guests.claim(self.store, record, user=user)
        args = {"vmid": vmid, "params": params, "start": int(bool(start))}
        return self._submit(record, "create", user=user, args=args)

    # -- config --------------------------------------------------------------------
    def change_config(
        self,
        vmid: int,
        changes: Mapping[str, Any],
        *,
        user: str,
        delete: str | Iterable[str] | None = None,
        revert: str | Iterable[str] | None = None,
        digest: str | None = None,
        type: str | None = None,
        node: str | None = None,
        authorize: Authorize | None = None,
    ) -> str | None:
        """Change config keys, delete (`delete`) or drop pending changes (`revert`).

        A stopped guest's config changes at once (returns None). A running
        guest's changes become pending and a task applies what its driver can
        take live (returns its UPID); the rest waits for the next start.
        `digest` (of the current config) makes the change conditional.
        """
        # From the view (a missing or moved guest confirmed on etcd): the change itself
        # is a compare-and-swap on the record, which a stale copy fails and retries.
        rec = self.checked_record(vmid, _accept, type=type, node=node)
        self._require_online(rec)  # its live state and driver are there
        schema = self.driver(rec["type"]).config_schema()
        valid = schema.validate({k: v for k, v in changes.items() if k != "skiplock"}, partial=True)
        bad_create = sorted(set(valid) & guests.CREATE_ONLY)
        if bad_create:
            raise ParamError({k: "only allowed at creation" for k in bad_create})
        deletes = _split_list(delete) if isinstance(delete, str | None) else list(delete)
        reverts = _split_list(revert) if isinstance(revert, str | None) else list(revert)
        errors = {}
        for key in deletes + reverts:
            if key not in schema.props:
                errors[key] = "unknown setting"
        for key in deletes:
            if key in valid:
                errors[key] = "can't set and delete the same option"
        if errors:
            raise ParamError(errors)
        if authorize is not None:
            authorize({privilege_for(k) for k in [*valid, *deletes]})
        if not valid and not deletes and not reverts:
            raise ParamError(message="no options specified")
        running = self.running(rec)

        def apply(r: dict[str, Any]) -> dict[str, Any]:
            if digest and guests.digest(r["config"]) != digest.lower():
                raise Conflict(DIGEST_CHANGED)
            guests.check_lock(r)
            pending = dict(r.get("pending", {}))
            pending_delete = list(r.get("pending_delete", []))
            for key in reverts:
                pending.pop(key, None)
                if key in pending_delete:
                    pending_delete.remove(key)
            if running:
                pending.update(valid)
                for key in deletes:
                    pending.pop(key, None)
                    if key not in pending_delete and key in r["config"]:
                        pending_delete.append(key)
            else:
                r["config"] = {**r["config"], **valid}
                for key in deletes:
                    r["config"].pop(key, None)
            r["pending"], r["pending_delete"] = pending, pending_delete
            return r

        guests.update_record(self.store, vmid, apply, services=self.services)
        if not running:
            return None
        return self._submit(rec, "config", user=user)

    def resize(
        self,
        vmid: int,
        disk: str,
        size: str,
        *,
        user: str,
        digest: str | None = None,
        type: str | None = None,
        node: str | None = None,
    ) -> str:
        """Grow `disk` to `size` ("+2G" adds, "10G" is absolute; never shrinks)."""
        rec = self.record(vmid, type=type, node=node)
        if digest and guests.digest(rec["config"]) != digest.lower():
            raise Conflict(DIGEST_CHANGED)
        guests.check_lock(rec)
        if disk not in rec["config"]:
            raise ParamError.one("disk", f"disk '{disk}' does not exist")
        current = self._disk_size(rec["config"][disk])
        try:
            amount = parse_size(size.lstrip("+"), default_unit="G")
        except ValueError as err:
            raise ParamError.one("size", str(err)) from None
        new = current + amount if size.startswith("+") else amount
        if new < current:
            raise ParamError.one("size", "shrinking disks is not supported")
        if new == current:
            raise ParamError.one("size", "the disk already has this size")
        return self._submit(rec, "resize", user=user, args={"disk": disk, "size": new})

    def _disk_size(self, value: Any) -> int:
        text = str(value)
        for part in text.split(","):
            if part.startswith("size="):
                try:
                    return parse_size(part[5:], default_unit="G")
                except ValueError:
                    break
        volid = text.split(",")[0]
        if self.volumes is not None and ":" in volid:
            return int(self.volumes.size(volid))
        raise ParamError.one("disk", "cannot determine the disk's current size")

    # -- power -----------------------------------------------------------------------
    def power(
        self,
        op: str,
        vmid: int,
        *,
        user: str,
        type: str | None = None,
        node: str | None = None,
        skiplock: bool = False,
        **params: Any,
    ) -> str:
        """Queue power operation `op` (one of POWER_OPS) on the guest's node.

        `params` go to the task: `timeout` (start, stop, shutdown, reboot),
        `forceStop` (shutdown), `overrule-shutdown` (stop). Only root@pam
        may `skiplock`, and only a stop skips a lock.
        """
        if op not in POWER_OPS:
            raise ParamError.one("op", f"unknown power operation '{op}'")

        def check(rec: dict[str, Any]) -> None:
            if op not in guests.TASK_TYPES[rec["type"]]:
                raise ParamError.one("op", f"{rec['type']} guests have no '{op}'")
            if op != "stop" or not skiplock:
                guests.check_lock(rec)
            if op == "start" and rec["config"].get("template"):
                raise Conflict(f"{rec['type']} {vmid} is a template: clone it to run it")

        rec = self.checked_record(vmid, check, type=type, node=node)
        if skiplock and user.partition("!")[0] != ROOT:
            raise ParamError.one("skiplock", "Only root may use this option.")
        args = {k: v for k, v in params.items() if v is not None}
        if skiplock:
            args["skiplock"] = 1
        return self._submit(rec, op, user=user, args=args)

    def start(self, vmid: int, *, user: str, **kw: Any) -> str:
        """Start the guest (pending changes apply first). Returns the task's UPID."""
        return self.power("start", vmid, user=user, **kw)

    def stop(self, vmid: int, *, user: str, **kw: Any) -> str:
        """Stop hard. `skiplock=True` (root@pam only) stops even a locked guest."""
        return self.power("stop", vmid, user=user, **kw)

    def shutdown(
        self, vmid: int, *, user: str, timeout: int = 60, force_stop: bool = False, **kw: Any
    ) -> str:
        """Clean shutdown; after `timeout` s a hard stop if `force_stop`, else the task fails."""
        return self.power(
            "shutdown", vmid, user=user, timeout=timeout, forceStop=int(force_stop), **kw
        )

    def reboot(self, vmid: int, *, user: str, **kw: Any) -> str:
        return self.power("reboot", vmid, user=user, **kw)

    def suspend(self, vmid: int, *, user: str, **kw: Any) -> str:
        return self.power("suspend", vmid, user=user, **kw)

    def resume(self, vmid: int, *, user: str, **kw: Any) -> str:
        return self.power("resume", vmid, user=user, **kw)

    def reset(self, vmid: int, *, user: str, **kw: Any) -> str:
        return self.power("reset", vmid, user=user, **kw)

    # -- migrate ---------------------------------------------------------------------
    def migrate(
        self,
        vmid: int,
        *,
        user: str,
        target: str | None = None,
        online: bool = False,
        restart: bool = False,
        type: str | None = None,
        node: str | None = None,
        **params: Any,
    ) -> str:
        """Queue moving the guest to `target` (None: the node with most free memory).

        The mode follows the driver's capabilities (corral.cluster.migration):
        a running guest needs `online` (drivers that live-migrate) or
        `restart` (shut down, move, start there). `params` go to the task
        (`timeout` of a restart migration's shutdown, `bwlimit`...).
        """
        # From the view: the task checks the lock again on its node, on its own read.
        rec = self.checked_record(vmid, guests.check_lock, type=type, node=node)
        driver = self.driver(rec["type"])
        config = guests.merged_config(rec)
        if target is None:
            memory = int(config.get("memory", 512)) << 20
            target = placement.choose_node(
                self.store, memory=memory, exclude=frozenset({rec["node"]})
            )
        if target == rec["node"]:
            raise ParamError.one("target", f"target is local node '{target}'")
        if not self._known(keys.node_info(target)):
            raise NotFound(f"no such node '{target}'")
        for key in ("target-storage", "targetstorage", "with-local-disks"):
            if params.get(key):
                raise ParamError.one(key, "moving volumes to other storage is not supported yet")
        migration.plan(
            self.store,
            driver,
            rec,
            config,
            target,
            running=self.running(rec),
            online=bool(online),
            restart=bool(restart),
        )
        args = {k: v for k, v in params.items() if v is not None}
        args.update(target=target, online=int(bool(online)), restart=int(bool(restart)))
        return self._submit(rec, "migrate", user=user, args=args)

    def migrate_preconditions(
        self, vmid: int, *, target: str | None = None, type: str | None = None,
        node: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Which nodes can take the guest and why the others cannot (Proxmox's shape)."""
        rec = self.record(vmid, type=type, node=node)
        config = guests.merged_config(rec)
        out = {"running": int(self.live(rec).get("status") == "running")}
        out.update(
            migration.preconditions(
                self.store, self.driver(rec["type"]), config, node=rec["node"], target=target
            )
        )
        return out

    # -- destroy -----------------------------------------------------------------------
    def destroy(
        self,
        vmid: int,
        *,
        user: str,
        force: bool = False,
        type: str | None = None,
        node: str | None = None,
    ) -> str:
        """Queue destroying the guest and its volumes. A running guest is refused
        unless `force` (then a stop is queued first). Protection refuses."""
        rec = self.checked_record(vmid, guests.check_destroyable, type=type, node=node)
        what = f"{migration.kind(rec['type'])} {vmid}"
        running = self.live(rec).get("status") == "running"
        if running and rec["node"] == self.node:
            # As published up to a round ago (it may have been stopped outside corral
            # since): a guest of this node is asked itself before the refusal.
            running = self.current(rec).get("status") == "running"
        if running and not force:
            raise Conflict(f"{what} is running - destroy failed")
        if running:
            self._submit(rec, "stop", user=user)
        return self._submit(rec, "destroy", user=user)

    # -- volumes ---------------------------------------------------------------------
    def volume_users(self, volid: str) -> list[int]:
        """VMIDs whose config (current or pending) uses volume `volid`."""
        return sorted(
            int(kv.value["vmid"])
            for kv in self.store.range(keys.GUESTS)
            if volid in volumes_in(kv.value, self.drivers)
        )

    def storage_users(self, storage: str) -> list[int]:
        """VMIDs whose config (current or pending) uses a volume on `storage`."""
        prefix = f"{storage}:"
        return sorted(
            int(kv.value["vmid"])
            for kv in self.store.range(keys.GUESTS)
            if any(v.startswith(prefix) for v in volumes_in(kv.value, self.drivers))
        )

    # -- internals ------------------------------------------------------------------------
    def _require_online(self, rec: dict[str, Any]) -> None:
        """A guest's node that is offline (crashed, cut off) cannot act on it: a task
        queued for it would fire whenever it comes back, long after its caller gave
        up. Refused now, as Proxmox's call proxied to that node fails. This node
        itself is up whatever its lease says (it lapses while etcd is frozen) and
        its worker runs what is queued."""
        if rec["node"] != self.node and not self._known(keys.node_alive(rec["node"])):
            kind = "CT" if rec["type"] == "lxc" else "VM"
            raise Unavailable(f"node '{rec['node']}' is offline: {kind} {rec['vmid']} is there")

    def _known(self, key: str) -> bool:
        """Whether `key` exists: yes from the node's view, a no confirmed on etcd (a
        node that joined or came back a moment ago is not refused)."""
        return (
            local_value(self.services, self.store, key) is not None
            or self.store.get(key) is not None
        )

    def _submit(
        self,
        rec: dict[str, Any],
        op: str,
        *,
        user: str,
        args: dict[str, Any] | None = None,
        table: Mapping[str, Mapping[str, str]] = guests.TASK_TYPES,
    ) -> str:
        """Queue `op` (a name in `table`, the flow's task types) on the guest's node."""
        vmid = int(rec["vmid"])
        self._require_online(rec)
        return self.tasks.submit(
            node=rec["node"],
            type=table[rec["type"]][op],
            id=str(vmid),
            user=user,
            args={"vmid": vmid, **(args or {})},
            serial=guests.serial(vmid),
        )
