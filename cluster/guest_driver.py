"""The contract every guest driver (LXC containers, QEMU VMs) fulfils.

corral.cluster never imports corral.lxc or corral.kvm: it finds drivers
through the `corral.guest_drivers` entry point group (see `registry`). The
common flow (records, locks, digests, pending changes, tasks) lives in
corral.cluster.guests and calls a driver only on the guest's own node.

What must hold after each call is stated on the method. Optional operations
raise `NotSupported`. Every call is bounded in time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from corral.cluster.errors import NotSupported
from corral.cluster.schema import Schema

# The node's 2 s status round (status_many with cached=True) re-reads the figures
# of an idle running guest every FIGURES_EVERY rounds (10 s, as Proxmox's
# pvestatd), guests spread over the rounds by VMID, and those of a guest using
# at least BUSY_CPU at its last read every round; its state, every round.
FIGURES_EVERY = 5
BUSY_CPU = 0.005

LogFn = Callable[[str], None]


class VolumeAccess(Protocol):
    """What a driver may do with storage, implemented by corral.storage.

    Volume IDs are Proxmox's `STORAGE:VOLNAME`. All methods raise CorralError
    subclasses (ParamError for a bad name, NotFound, NotSupported...).
    """

    def alloc(
        self,
        storage: str,
        vmid: int,
        *,
        size: int,
        fmt: str | None = None,
        content: str = "images",
        name: str | None = None,
    ) -> str:
        """Allocate a volume of `size` bytes; returns its volume ID."""
        ...

    def free(self, volid: str) -> None: ...

    def resize(self, volid: str, size: int) -> None:
        """Grow to `size` bytes (never shrinks)."""
        ...

    def size(self, volid: str) -> int: ...

    # Snapshots, clones and streams: the guest-level flows (corral.cluster.snapshots,
    # clones, backup) reach storage through these; unsupported ones raise NotSupported.
    def has_feature(self, volid: str, feature: str, snap: str | None = None) -> bool:
        """Proxmox's volume_has_feature: snapshot, clone, copy, template..."""
        ...

    def snapshot(self, volid: str, snap: str) -> None: ...

    def snapshot_delete(self, volid: str, snap: str) -> None: ...

    def snapshot_rollback(self, volid: str, snap: str) -> None: ...

    def clone(self, volid: str, vmid: int, *, snap: str | None = None, full: bool = False) -> str:
        """A linked clone for `vmid` (or with `full` an independent copy); its volume ID."""
        ...

    def export_formats(self, volid: str) -> list[str]:
        """Stream formats `export` can write: "tar" (container roots), "raw", "qcow2"."""
        ...

    def export(self, volid: str, *, fmt: str, out: IO[bytes], snap: str | None = None) -> None: ...

    def import_(
        self,
        storage: str,
        *,
        stream: IO[bytes],
        fmt: str,
        vmid: int,
        content: str = "images",
        size: int | None = None,
    ) -> str:
        """A new volume of `vmid` on `storage` filled from `stream`; its volume ID."""
        ...

    def create_base(self, volid: str) -> str:
        """Turn a volume into a read-only template base; its new volume ID."""
        ...

    def qemu_disk(self, volid: str) -> dict[str, Any]:
        """How QEMU reaches the volume: {"kind": "file", "path", "format"} or
        {"kind": "rbd", "pool", "image", "conf", "user",
        "hosts": [{"host", "port"}, ...]}."""
        ...

    def mount_rootdir(self, volid: str) -> str:
        """Make a `rootdir` volume available as a directory and return its path."""
        ...

    def unmount_rootdir(self, volid: str) -> None: ...

    def file_path(self, volid: str) -> str:
        """A local file for file-based content (vztmpl, iso, snippets)."""
        ...

    def content_of(self, storage: str) -> frozenset[str]:
        """Content types `storage` takes (images, rootdir, vztmpl, iso...) on this node."""
        ...

    def check_volume(
        self, key: str, volid: str, *, content: str, here: bool, new: bool = False
    ) -> None:
        """Config key `key` may name `volid` for content type `content`: its
        storage takes `content`, and an existing volume (not `new`, a
        `STORAGE:SIZE` still to allocate) is of that type. With `here`, the storage must also be
        enabled on this node; without, only the cluster-wide config is read
        (the check runs before the guest's node is reached). ParamError names
        `key`."""
        ...


@dataclass(frozen=True)
class DriverInfo:
    """Capabilities read by generic code; never test a driver's name."""

    type: str  # "lxc" or "qemu" (Proxmox's resource type)
    live_config: frozenset[str] = frozenset()  # keys applied to a running guest
    can_suspend: bool = True
    can_snapshot: bool = False
    can_live_migrate: bool = False


@dataclass
class Probe:
    ok: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class GuestDriver:
    """Base class. One instance per node daemon, shared by its worker threads."""

    info: DriverInfo

    def __init__(
        self, *, node: str, data_dir: str, options: Mapping[str, Any] | None = None
    ) -> None:
        self.node = node
        self.data_dir = data_dir
        self.options = dict(options or {})

    # -- declarations --------------------------------------------------
    def config_schema(self) -> Schema:
        """The guest's config keys, Proxmox names and formats."""
        raise NotImplementedError

    def probe(self) -> Probe:
        """Can this node run guests of this type? Must return within 30 s."""
        return Probe(True)

    def close(self) -> None:
        """Release what the driver holds (connections); called once when the node stops."""

    def check_create(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        params: Mapping[str, Any],
        volumes: VolumeAccess | None,
    ) -> None:
        """Cheap checks before a create task is queued: bad input raises ParamError
        naming the key, and nothing is made. Runs on the node that answers the
        API call, which need not be the guest's node: only what holds
        cluster-wide may be checked (`volumes.check_volume(..., here=False)`)."""

    # -- lifecycle ------------------------------------------------------
    def create(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        volumes: VolumeAccess,
        log: LogFn,
        params: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Build the guest on this node from `config` (allocating disks named as
        `STORAGE:SIZE` through `volumes`). Returns the config to store, with
        allocated volume IDs filled in. On failure nothing is left behind."""
        raise NotImplementedError

    def start(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        volumes: VolumeAccess,
        log: LogFn,
        ready: Callable[[], None] | None = None,
    ) -> None:
        """After it returns the guest is running (status() says "running").
        Raises Conflict if it already runs (the start task does not ask first).
        `ready`, when given, is called once the start is prepared, right before the
        guest is started (a start task waits there for its record to be durable); if
        it raises, the guest stays stopped and the error propagates."""
        raise NotImplementedError

    def shutdown(
        self, vmid: int, config: dict[str, Any], *, timeout: int, force_stop: bool, log: LogFn
    ) -> None:
        """Clean shutdown; after `timeout` s stop hard if `force_stop`, else raise."""
        raise NotImplementedError

    def stop(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        log: LogFn,
        ready: Callable[[], None] | None = None,
    ) -> None:
        """Hard stop. Stopping a stopped guest is not an error. `ready`: as for start,
        called right before the guest is stopped (not at all when it is stopped)."""
        raise NotImplementedError

    def reboot(
        self, vmid: int, config: dict[str, Any], *, timeout: int, volumes: VolumeAccess, log: LogFn
    ) -> None:
        self.shutdown(vmid, config, timeout=timeout, force_stop=True, log=log)
        self.start(vmid, config, volumes=volumes, log=log)

    def reset(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        raise NotSupported(what="reset")

    def suspend(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        raise NotSupported(what="suspend")

    def resume(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        raise NotSupported(what="resume")

    def destroy(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        """Remove the guest from this node and free its owned volumes. The guest is stopped."""
        raise NotImplementedError

    # -- state -----------------------------------------------------------
    def status(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        """Proxmox's status/current fields: status ("running"|"stopped"|...),
        cpu, mem, maxmem, disk, maxdisk, netin, netout, uptime, pid..."""
        raise NotImplementedError

    def status_now(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        """status() at a task's end: the state as it is now; a figure that costs
        long to count (a container's disk usage) may be left out, for the node's
        round to add."""
        return self.status(vmid, config)

    def status_many(
        self, items: list[tuple[int, dict[str, Any]]], *, cached: bool = False
    ) -> dict[int, dict[str, Any]]:
        """status() of many guests (vmid, config) at once; drivers override it to
        measure in one pass. `cached` (the node's periodic round): a driver may
        answer a guest's last figures while they are not due, but must report a
        change of state (running, stopped) within the round. Callers must not
        modify the entries."""
        return {vmid: self.status(vmid, config) for vmid, config in items}

    def running(self) -> set[int]:
        """VMIDs of this type running on this node right now."""
        raise NotImplementedError

    def apply_live(
        self,
        vmid: int,
        old: dict[str, Any],
        new: dict[str, Any],
        *,
        volumes: VolumeAccess,
        log: LogFn,
    ) -> set[str]:
        """Apply changed keys to a running guest. Returns the keys applied; the
        rest stay pending until the next start."""
        return set()

    def resize(
        self,
        vmid: int,
        config: dict[str, Any],
        disk: str,
        size: int,
        *,
        volumes: VolumeAccess,
        log: LogFn,
    ) -> dict[str, Any]:
        """Grow `disk` to `size` bytes; returns the updated config."""
        raise NotSupported(what="resize")

    # -- moving between nodes -----------------------------------------------------
    def volumes_of(self, config: dict[str, Any]) -> dict[str, str]:
        """Config key -> volume ID of every disk/rootfs/mount point in `config`."""
        return {}

    def adopt(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        """Make this node know a guest whose volumes already exist (after a
        migration moved its record here): write its local definition from the
        record, resolving volumes through `volumes`. Idempotent; called before
        each start."""

    def release(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        """Forget a stopped guest on this node WITHOUT freeing its volumes (it now
        lives on another node)."""
        raise NotSupported(what="migration")

    def migrate_live(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        target_address: str,
        log: LogFn,
        target_data_dir: str | None = None,
    ) -> None:
        """Move the running guest to the node at `target_address` (its cluster
        address; how to reach its hypervisor there is the driver's business).
        Only with every volume on shared storage (the caller checked).
        `target_data_dir` is that node's data dir, where its run files go.
        After it returns the guest runs there and not here."""
        raise NotSupported(what="live migration")

    def interfaces(self, vmid: int, config: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotSupported(what="interfaces")

    def console(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        raise NotSupported(what="console")

    # -- copies (clone, restore with `unique`) -------------------------------------------
    def renew_identity(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        """The config of a copy that becomes guest `vmid`: fresh MAC addresses
        and machine IDs, volumes untouched."""
        return dict(config)

    def backup_live(
        self,
        vmid: int,
        config: dict[str, Any],
        disks: dict[str, str],
        workdir: str,
        *,
        log: LogFn,
    ) -> dict[str, str]:
        """Copy disks `disks` (config key -> volume ID) of the running guest, as
        they are at one instant while it keeps running, into raw files in
        `workdir`; returns config key -> file. For snapshot-mode backups where
        the storage cannot snapshot the volumes under the running guest."""
        raise NotSupported(what=f"live backups of {self.info.type} guests")

    # -- snapshot steps (the flow is corral.cluster.snapshots, written once) ------
    def freeze(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> bool:
        """Quiesce a running guest before its volumes are snapshotted (a CT's
        processes frozen, a VM's filesystems through its guest agent). Returns
        whether `thaw` must follow; False where there is nothing to do."""
        return False

    def thaw(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        """Undo `freeze`. Must not raise for a guest that is no longer frozen."""

    def snapshot_volume(
        self,
        vmid: int,
        config: dict[str, Any],
        volid: str,
        snap: str,
        *,
        op: str,
        running: bool,
        volumes: VolumeAccess,
        log: LogFn,
    ) -> None:
        """`op` ("create" | "delete") snapshot `snap` of one of the guest's
        volumes. By default the storage does it; a driver whose running guest
        holds the volume open (QEMU and a qcow2 file) does it through the
        hypervisor instead. Rollbacks run on stopped guests only, by storage."""
        if op == "create":
            volumes.snapshot(volid, snap)
        elif op == "delete":
            volumes.snapshot_delete(volid, snap)
        else:
            raise NotSupported(what=f"snapshot operation '{op}'")

    def save_vmstate(self, vmid: int, config: dict[str, Any], path: str, *, log: LogFn) -> None:
        """Write the running guest's RAM and device state to `path`; the guest
        keeps running. For snapshots with `vmstate=1`."""
        raise NotSupported(what=f"saving the RAM state of {self.info.type} guests")

    def restore_vmstate(
        self,
        vmid: int,
        config: dict[str, Any],
        path: str,
        *,
        volumes: VolumeAccess,
        log: LogFn,
    ) -> None:
        """Start the stopped guest from the state in `path` (a rollback to a
        snapshot taken with `vmstate=1`)."""
        raise NotSupported(what=f"restoring the RAM state of {self.info.type} guests")

    def terminal(self, vmid: int, config: dict[str, Any]) -> list[str]:
        """The argv of a login shell inside the running guest, to run on a pty
        (the termproxy console)."""
        raise NotSupported(what="terminal")
