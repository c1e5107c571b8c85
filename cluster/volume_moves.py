"""Which volumes a migration must copy, and copying them to the target node.

A volume on shared storage stays where it is. One on a storage the target also
has (a node-local `local` dir exists on every node under the same ID) is
streamed there: the source exports it (tar for container roots, the image's
own format for disks) into a pipe that goes out chunked over HTTPS to the
target's import endpoint, so nothing is staged on disk. ISOs, templates and
other non-disk content on local storage block the move, as in Proxmox.
"""

from __future__ import annotations

import os
import threading
from typing import Any, NamedTuple

from corral.cluster import keys, peer
from corral.cluster.guest_driver import GuestDriver, LogFn
from corral.cluster.store_api import StoreAPI

NON_DISK = ("iso/", "vztmpl/", "snippets/", "backup/")
COPY_TIMEOUT = 3600.0


def storage_on(store: StoreAPI, storage_id: str, node: str) -> dict[str, Any] | None:
    """The storage's config if it is enabled on `node`, else None."""
    conf = store.get_value(keys.storage(storage_id)) or {}
    if not conf or int(conf.get("disable") or 0):
        return None
    nodes = [n for n in str(conf.get("nodes") or "").split(",") if n]
    if nodes and node not in nodes:
        return None
    return dict(conf)


def shared(conf: dict[str, Any]) -> bool:
    """Does every node see the same volumes on this storage?"""
    # Ceph RBD is shared by nature (its plugin says so); dir/btrfs/zfs only when
    # marked shared (every node mounts the same thing).
    from corral.cluster import registry

    plugin = registry.load(registry.STORAGE_PLUGINS).get(str(conf.get("type")))
    if plugin is not None and plugin.shared_by_nature:
        return True
    return str(conf.get("shared", 0)) in ("1", "True", "true")


class Blocker(NamedTuple):
    """A volume that keeps the guest from moving, and why."""

    key: str
    volid: str
    reason: str

    @property
    def storage(self) -> str:
        return self.volid.split(":", 1)[0]

    def __str__(self) -> str:
        return f"{self.key} ({self.volid}: {self.reason})"


def plan(
    store: StoreAPI, driver: GuestDriver, config: dict[str, Any], target: str
) -> tuple[dict[str, str], list[Blocker]]:
    """(config key -> volume ID to copy, the volumes that keep the move from happening)."""
    copies: dict[str, str] = {}
    blockers: list[Blocker] = []
    for key, volid in sorted(driver.volumes_of(config).items()):
        storage_id, _, volname = volid.partition(":")
        conf = storage_on(store, storage_id, target)
        if conf is not None and shared(conf):
            continue
        if conf is None:
            blockers.append(Blocker(key, volid, f"storage '{storage_id}' is not on '{target}'"))
        elif volname.startswith(NON_DISK):
            blockers.append(Blocker(key, volid, "local non-disk content"))
        else:
            copies[key] = volid
    return copies, blockers


def _export_format(volumes: Any, volid: str) -> str:
    formats = volumes.export_formats(volid)
    own = volid.rsplit(".", 1)[-1]
    return own if own in formats else formats[0]


def copy(
    store: StoreAPI, data_dir: str, volumes: Any, volid: str, target: str, *, vmid: int, log: LogFn
) -> str:
    """Stream `volid` into the same storage ID on `target`; returns the new volume ID."""
    storage_id = volid.split(":", 1)[0]
    fmt = _export_format(volumes, volid)
    content = "rootdir" if fmt == "tar" else "images"
    log(f"copying {volid} to node '{target}' ({fmt} stream)")
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as out:
                volumes.export(volid, fmt=fmt, out=out)
        except BaseException as err:  # noqa: BLE001 - re-raised by the caller below
            failure.append(err)

    producer = threading.Thread(target=produce, name=f"export-{vmid}", daemon=True)
    producer.start()
    try:
        with os.fdopen(read_fd, "rb") as stream:
            new = str(
                peer.call(
                    store, data_dir, target, "POST",
                    f"/nodes/{target}/storage/{storage_id}/import",
                    params={"vmid": vmid, "format": fmt, "content": content},
                    body=stream, timeout=COPY_TIMEOUT,
                )
            )  # fmt: skip
    finally:
        producer.join(COPY_TIMEOUT)
    if failure:
        # The target may have taken a truncated stream for a whole volume: drop it.
        remove_remote(store, data_dir, target, new, log=log)
        raise failure[0]
    return new  # the caller logs it once it has recorded the copy


def remove_remote(store: StoreAPI, data_dir: str, target: str, volid: str, *, log: LogFn) -> None:
    """Best effort: free a volume this migration made on `target`."""
    storage_id = volid.split(":", 1)[0]
    try:
        peer.call(store, data_dir, target, "DELETE",
                  f"/nodes/{target}/storage/{storage_id}/content/{volid}",
                  params={"delay": 30})  # fmt: skip
        log(f"removed {volid} from '{target}'")
    except Exception as err:  # noqa: BLE001 - the first failure is what matters
        log(f"could not remove {volid} from '{target}': {err}")


def replace_volid(value: Any, old: str, new: str) -> Any:
    """`local:100/vm-100-disk-0.raw,size=8G` with the volume ID swapped."""
    if not isinstance(value, str):
        return value
    parts = value.split(",")
    for i, part in enumerate(parts):
        if part == old:
            parts[i] = new
        elif part == f"volume={old}":
            parts[i] = f"volume={new}"
    return ",".join(parts)


def rewrite(config: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    out = dict(config)
    for key, value in out.items():
        for old, new in mapping.items():
            value = replace_volid(value, old, new)
        out[key] = value
    return out
