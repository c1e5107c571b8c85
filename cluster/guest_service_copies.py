"""The guest service's operations that copy a guest's state: snapshots (create,
rollback, delete), clones and templates. Their flows are corral.cluster.snapshots
and corral.cluster.clones; these methods check what can be refused at once and
queue the task on the guest's node, as the rest of GuestService does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from corral.cluster import clones, guests, keys, snapshots
from corral.cluster.errors import ParamError, Unavailable

if TYPE_CHECKING:
    from corral.cluster.guest_driver import GuestDriver, VolumeAccess
    from corral.cluster.store_api import StoreAPI


class CopyOperations:
    """Mixed into GuestService (which provides the attributes and helpers below)."""

    store: StoreAPI
    drivers: Mapping[str, GuestDriver]
    volumes: VolumeAccess | None

    if TYPE_CHECKING:

        def record(
            self, vmid: int, *, type: str | None = None, node: str | None = None
        ) -> dict[str, Any]: ...

        def running(self, rec: dict[str, Any]) -> bool: ...

        def _submit(
            self,
            rec: dict[str, Any],
            op: str,
            *,
            user: str,
            args: dict[str, Any] | None = None,
            table: Mapping[str, Mapping[str, str]] = ...,
        ) -> str: ...

    # -- snapshots -----------------------------------------------------------------
    def snapshots(
        self, vmid: int, *, type: str | None = None, node: str | None = None
    ) -> list[dict[str, Any]]:
        """The guest's snapshot tree, Proxmox's shape (with the `current` entry)."""
        rec = self.record(vmid, type=type, node=node)
        return snapshots.tree(rec, running=self.running(rec))

    def snapshot(
        self,
        vmid: int,
        snapname: str,
        *,
        user: str,
        description: str = "",
        vmstate: bool = False,
        type: str | None = None,
        node: str | None = None,
    ) -> str:
        """Queue a snapshot of every disk (or none) named `snapname`; `vmstate`
        keeps a running VM's memory too. Refused at once for a taken name, a
        lock, or a disk whose storage cannot snapshot."""
        rec = self.record(vmid, type=type, node=node)
        snapshots.check_create(rec, snapname)
        self._check_snapshot_disks(rec)
        args: dict[str, Any] = {"snapname": snapname, "description": description or ""}
        if vmstate:
            args["vmstate"] = 1
        return self._submit(rec, "create", user=user, args=args, table=snapshots.TASK_TYPES)

    def rollback(
        self,
        vmid: int,
        snapname: str,
        *,
        user: str,
        start: bool = False,
        type: str | None = None,
        node: str | None = None,
    ) -> str:
        """Queue restoring disks and config to `snapname` (then a start if `start`)."""
        rec = self.record(vmid, type=type, node=node)
        snapshots.get_snapshot(rec, snapname)
        guests.check_lock(rec)
        args = {"snapname": snapname, "start": int(bool(start))}
        return self._submit(rec, "rollback", user=user, args=args, table=snapshots.TASK_TYPES)

    def delete_snapshot(
        self,
        vmid: int,
        snapname: str,
        *,
        user: str,
        force: bool = False,
        type: str | None = None,
        node: str | None = None,
    ) -> str:
        """Queue deleting `snapname`; `force` drops it from the config even if a
        disk's snapshot cannot be removed."""
        rec = self.record(vmid, type=type, node=node)
        snapshots.get_snapshot(rec, snapname)
        guests.check_lock(rec)
        args = {"snapname": snapname, "force": int(bool(force))}
        return self._submit(rec, "delete", user=user, args=args, table=snapshots.TASK_TYPES)

    def _check_snapshot_disks(self, rec: dict[str, Any]) -> None:
        """Refuse at once where a disk's storage cannot snapshot (this node knows the
        drivers and storages; the task checks again on the guest's node)."""
        driver = self.drivers.get(rec["type"])
        if driver is None or self.volumes is None:
            return
        try:
            snapshots.require_snapshot_feature(driver, rec["config"], self.volumes)
        except ParamError as err:
            # A storage not available on this node: the guest's node decides.
            if "not available on node" not in str(err.errors):
                raise

    # -- clones and templates ---------------------------------------------------------
    def clone(
        self,
        vmid: int,
        newid: int,
        *,
        user: str,
        full: bool | None = None,
        target: str | None = None,
        storage: str | None = None,
        snapname: str | None = None,
        name: str | None = None,
        description: str | None = None,
        type: str | None = None,
        node: str | None = None,
    ) -> str:
        """Claim `newid` (locked "create") and queue copying the guest into it on
        `target` (default: the guest's node). `full` None: a linked clone of a
        template, a full copy otherwise; `storage` (full copies only) moves the
        disks there. The claim is dropped if the task cannot be queued."""
        rec = self.record(vmid, type=type, node=node)
        guests.check_lock(rec)
        full_copy = clones.check_clone(rec, newid, full=full, snapname=snapname)
        target = target or rec["node"]
        if self.store.get(keys.node_alive(target)) is None:
            raise Unavailable(f"node '{target}' is offline")
        if storage and not full_copy:
            raise ParamError.one("storage", "a target storage needs a full clone (full=1)")
        if storage and self.store.get_value(keys.storage(storage)) is None:
            raise ParamError.one("storage", f"storage '{storage}' does not exist")
        driver = self.drivers.get(rec["type"])
        if target != rec["node"] and driver is not None:
            config = snapshots.get_snapshot(rec, snapname)["config"] if snapname else rec["config"]
            clones.check_target_storage(self.store, driver, config, kind=guests._kind(rec),
                                        target=target, storage=storage)  # fmt: skip
        name_key = "hostname" if rec["type"] == "lxc" else "name"
        placeholder = {k: v for k, v in rec["config"].items() if k == name_key}
        guests.claim(self.store, guests.new_record(rec["type"], newid, target, placeholder),
                     user=user)  # fmt: skip
        args = {"newid": newid, "full": int(full_copy), "target": target, "storage": storage,
                "snapname": snapname, "name": name, "description": description}  # fmt: skip
        try:
            return self._submit(rec, "clone", user=user, args=args, table=clones.TASK_TYPES)
        except BaseException:
            self.store.delete(keys.guest(newid))
            raise

    def template(
        self,
        vmid: int,
        *,
        user: str,
        disk: str | None = None,
        type: str | None = None,
        node: str | None = None,
    ) -> str:
        """Queue turning the guest (or only `disk`) into a template (base volumes)."""
        rec = self.record(vmid, type=type, node=node)
        guests.check_lock(rec)
        args = {"disk": disk} if disk else {}
        return self._submit(rec, "template", user=user, args=args, table=clones.TASK_TYPES)
