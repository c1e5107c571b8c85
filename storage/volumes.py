"""Volumes by ID (`STORAGE:VOLNAME`): the one door from guests and the API to the plugins.

Implements corral.cluster.guest_driver.VolumeAccess and the content/status
operations the storage API needs. It resolves a storage ID to its config
(read fresh from etcd through `configs`, so an edit applies at once), checks
that the storage is enabled and available on this node, activates it once
per config, and calls the stateless plugin for its type.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import IO, Any

from corral.cluster import registry
from corral.cluster.errors import NotFound, NotSupported, ParamError
from corral.storage.plugin import StoragePlugin, check_snap, out_of_space
from corral.storage.volid import check_content, check_storage_id, split_volid

# The storage task handlers (upload moves, deletions) run on this node's worker.
from corral.storage import tasks as _tasks  # noqa: F401, E402  isort: skip
from corral.storage import download as _download  # noqa: F401, E402  isort: skip

log = logging.getLogger(__name__)

Configs = Callable[[], dict[str, dict[str, Any]]]


def plugins() -> dict[str, StoragePlugin]:
    """One shared instance per storage type found through entry points."""
    with _LOCK:
        if not _PLUGINS:
            for name, cls in registry.load(registry.STORAGE_PLUGINS).items():
                _PLUGINS[name] = cls()
        return _PLUGINS


_PLUGINS: dict[str, StoragePlugin] = {}
_LOCK = threading.Lock()


def plugin_for_type(type: str) -> StoragePlugin:
    found = plugins().get(type)
    if found is None:
        reason = registry.UNAVAILABLE.get(registry.STORAGE_PLUGINS, {}).get(type)
        detail = f" ({reason})" if reason else ""
        raise ParamError.one("type", f"unknown storage type '{type}'{detail}")
    return found


# Reasons a storage or volume does not fit a guest's key, in the words users know.
_NO_CONTENT = {
    "rootdir": "does not support container directories (content type 'rootdir')",
    "vztmpl": "holds no container templates (content type 'vztmpl')",
}
_NOT_OF_TYPE = {
    "rootdir": "volume '{volid}' is not a container volume",
    "vztmpl": "'{volid}' is not a container template",
}


def available_on(cfg: dict[str, Any], node: str) -> bool:
    nodes = [n for n in str(cfg.get("nodes") or "").split(",") if n]
    return not nodes or node in nodes


class Volumes:
    """Volume operations on this node. Thread-safe; plugins are stateless."""

    def __init__(self, configs: Configs, *, node: str, fresh: Configs | None = None) -> None:
        self._configs = configs
        # `configs` may answer from memory (the node's view); a storage it does not
        # know is looked up in `fresh` (the store itself) before "no such storage".
        self._fresh = fresh
        self.node = node
        self._active: dict[str, str] = {}  # storage -> repr of the config it was activated with
        self._lock = threading.Lock()

    # -- resolution ------------------------------------------------------------
    def configs(self) -> dict[str, dict[str, Any]]:
        return self._configs()

    def config(self, storage: str, *, param: str = "storage") -> dict[str, Any]:
        check_storage_id(storage, param=param)
        cfg = self._configs().get(storage)
        if cfg is None and self._fresh is not None:
            cfg = self._fresh().get(storage)
        if cfg is None:
            raise NotFound(what=f"storage '{storage}'")
        return cfg

    def resolve(
        self, storage: str, *, param: str = "storage", activate: bool = True
    ) -> tuple[StoragePlugin, dict[str, Any]]:
        cfg = self.config(storage, param=param)
        if int(cfg.get("disable") or 0):
            raise ParamError.one(param, f"storage '{storage}' is disabled")
        if not available_on(cfg, self.node):
            raise ParamError.one(
                param, f"storage '{storage}' is not available on node '{self.node}'"
            )
        plugin = plugin_for_type(str(cfg.get("type")))
        if activate:
            self._activate(storage, plugin, cfg)
        return plugin, cfg

    def _activate(self, storage: str, plugin: StoragePlugin, cfg: dict[str, Any]) -> None:
        stamp = repr(sorted(cfg.items()))
        with self._lock:
            if self._active.get(storage) == stamp:
                return
        plugin.activate(cfg)
        with self._lock:
            self._active[storage] = stamp

    def _vol(
        self, volid: str, *, param: str = "volume"
    ) -> tuple[StoragePlugin, dict[str, Any], str]:
        storage, volname = split_volid(volid, param=param)
        plugin, cfg = self.resolve(storage, param=param)
        plugin.parse_volname(cfg, volname=volname)  # validates before any path is built
        return plugin, cfg, volname

    def parse(self, volid: str, *, param: str = "volume") -> Any:
        """The parsed VolName of a volume ID (vtype, vmid, fmt...), validated."""
        storage, volname = split_volid(volid, param=param)
        plugin, cfg = self.resolve(storage, param=param, activate=False)
        return plugin.parse_volname(cfg, volname=volname)

    def content_of(self, storage: str) -> frozenset[str]:
        plugin, cfg = self.resolve(storage, activate=False)
        return plugin.enabled_content(cfg)

    def check_volume(
        self, key: str, volid: str, *, content: str, here: bool, new: bool = False
    ) -> None:
        """See VolumeAccess.check_volume. `new`: `volid` is `STORAGE:SIZE`, a
        volume still to allocate (its storage must take `content`); otherwise
        an existing volume, whose storage must take `content` and whose name
        must be of that type. Storage errors become a ParamError naming `key`."""
        storage, _, volname = volid.partition(":")
        try:
            if here:
                plugin, cfg = self.resolve(storage, param=key, activate=False)
            else:
                cfg = self.config(storage, param=key)
                if int(cfg.get("disable") or 0):
                    raise ParamError.one(key, f"storage '{storage}' is disabled")
                plugin = plugin_for_type(str(cfg.get("type")))
            if content not in plugin.enabled_content(cfg):
                reason = _NO_CONTENT.get(content, "does not support content type '{content}'")
                raise ParamError.one(key, f"storage '{storage}' " + reason.format(content=content))
            if not new and plugin.parse_volname(cfg, volname=volname).vtype != content:
                reason = _NOT_OF_TYPE.get(content, "volume '{volid}' is not of type '{content}'")
                raise ParamError.one(key, reason.format(volid=volid, content=content))
        except ParamError as err:
            if key in err.errors:
                raise
            raise ParamError.one(key, "; ".join(err.errors.values()) or str(err)) from None
        except (NotFound, NotSupported) as err:
            raise ParamError.one(key, str(err)) from None

    def is_shared(self, storage: str) -> bool:
        cfg = self.config(storage)
        return plugin_for_type(str(cfg.get("type"))).is_shared(cfg)

    # -- VolumeAccess ------------------------------------------------------------
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
        plugin, cfg = self.resolve(storage)
        check_content(content, plugin.enabled_content(cfg))
        with out_of_space(storage, f"a new volume of {vmid} ({size} bytes)"):
            volname = plugin.alloc(cfg, vmid=vmid, size=size, fmt=fmt, content=content, name=name)
        return f"{storage}:{volname}"

    def free(self, volid: str) -> None:
        plugin, cfg, volname = self._vol(volid)
        plugin.free(cfg, volname=volname)

    def resize(self, volid: str, size: int) -> None:
        plugin, cfg, volname = self._vol(volid)
        with out_of_space(volid.partition(":")[0], f"{volid} grown to {size} bytes"):
            plugin.resize(cfg, volname=volname, size=size)

    def size(self, volid: str) -> int:
        plugin, cfg, volname = self._vol(volid)
        return plugin.size(cfg, volname=volname)

    def qemu_disk(self, volid: str) -> dict[str, Any]:
        plugin, cfg, volname = self._vol(volid)
        return plugin.qemu_disk(cfg, volname=volname)

    def mount_rootdir(self, volid: str) -> str:
        plugin, cfg, volname = self._vol(volid)
        return plugin.mount_rootdir(cfg, volname=volname)

    def unmount_rootdir(self, volid: str) -> None:
        plugin, cfg, volname = self._vol(volid)
        plugin.unmount_rootdir(cfg, volname=volname)

    def file_path(self, volid: str) -> str:
        plugin, cfg, volname = self._vol(volid)
        return plugin.file_path(cfg, volname=volname)

    # -- snapshots, clones, streams ---------------------------------------------------
    def snapshot(self, volid: str, snap: str) -> None:
        plugin, cfg, volname = self._vol(volid)
        plugin.snapshot(cfg, volname=volname, snap=check_snap(snap))

    def snapshot_delete(self, volid: str, snap: str) -> None:
        plugin, cfg, volname = self._vol(volid)
        plugin.snapshot_delete(cfg, volname=volname, snap=check_snap(snap))

    def snapshot_rollback(self, volid: str, snap: str) -> None:
        plugin, cfg, volname = self._vol(volid)
        plugin.snapshot_rollback(cfg, volname=volname, snap=check_snap(snap))

    def snapshots(self, volid: str) -> list[str]:
        plugin, cfg, volname = self._vol(volid)
        return plugin.snapshots(cfg, volname=volname)

    def has_feature(self, volid: str, feature: str, snap: str | None = None) -> bool:
        plugin, cfg, volname = self._vol(volid)
        return plugin.has_feature(cfg, feature=feature, volname=volname, snap=snap)

    def create_base(self, volid: str) -> str:
        storage = volid.split(":", 1)[0]
        plugin, cfg, volname = self._vol(volid)
        return f"{storage}:{plugin.create_base(cfg, volname=volname)}"

    def clone(self, volid: str, vmid: int, *, snap: str | None = None, full: bool = False) -> str:
        """A linked clone where the backend can, or (full=True) an independent copy."""
        storage = volid.split(":", 1)[0]
        plugin, cfg, volname = self._vol(volid)
        if snap is not None:
            check_snap(snap)
        if full:
            return f"{storage}:{plugin.copy_image(cfg, volname=volname, vmid=vmid, snap=snap)}"
        return f"{storage}:{plugin.clone_image(cfg, volname=volname, vmid=vmid, snap=snap)}"

    def export_formats(self, volid: str) -> list[str]:
        plugin, cfg, volname = self._vol(volid)
        return plugin.export_formats(cfg, volname=volname)

    def export(self, volid: str, *, fmt: str, out: IO[bytes], snap: str | None = None) -> None:
        plugin, cfg, volname = self._vol(volid)
        plugin.export(cfg, volname=volname, fmt=fmt, out=out, snap=snap)

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
        plugin, cfg = self.resolve(storage)
        check_content(content, plugin.enabled_content(cfg))
        with out_of_space(storage, f"a volume of {vmid} imported ({fmt})"):
            volname = plugin.import_(
                cfg, stream=stream, fmt=fmt, vmid=vmid, content=content, size=size
            )
        return f"{storage}:{volname}"

    # -- storage-level ----------------------------------------------------------------
    def list_volumes(
        self, storage: str, *, content: str | None = None, vmid: int | None = None
    ) -> list[dict[str, Any]]:
        plugin, cfg = self.resolve(storage)
        if content is not None:
            check_content(content, plugin.enabled_content(cfg))
        rows = plugin.list_volumes(cfg, content=content, vmid=vmid)
        return [{**row, "volid": f"{storage}:{row['volname']}"} for row in rows]

    def status(self, storage: str, *, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
        """{"total", "used", "avail", "active", "enabled", "shared", "content", "type"};
        `cfg` when the caller has just read it (one etcd read for many storages)."""
        if cfg is None:
            cfg = self.config(storage)
        plugin = plugin_for_type(str(cfg.get("type")))
        enabled = not int(cfg.get("disable") or 0) and available_on(cfg, self.node)
        out: dict[str, Any] = {
            "type": plugin.type,
            "content": ",".join(sorted(plugin.enabled_content(cfg))),
            "shared": int(plugin.is_shared(cfg)),
            "enabled": int(enabled),
            "active": 0,
            "total": 0,
            "used": 0,
            "avail": 0,
        }
        if not enabled:
            return out
        try:
            self._activate(storage, plugin, cfg)
            st = plugin.status(cfg)
        except Exception as err:  # noqa: BLE001 - one broken storage must not hide the others
            log.warning("status of storage %s failed: %s", storage, err)
            out["error"] = str(err)
            return out
        out.update(
            total=int(st.get("total", 0)),
            used=int(st.get("used", 0)),
            avail=int(st.get("avail", 0)),
            active=int(bool(st.get("active"))),
        )
        return out

    def status_all(self) -> dict[str, dict[str, Any]]:
        return {sid: self.status(sid, cfg=cfg) for sid, cfg in sorted(self._configs().items())}
