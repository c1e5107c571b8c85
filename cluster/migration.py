"""Migration policy, written once for the API's checks and the migrate task.

How a guest may move follows from its driver's declared capabilities
(`DriverInfo.can_live_migrate`), never from its type's name:

- stopped: an offline migration (volumes on local storage are copied);
- running, `online` and the driver can live-migrate: a live migration, which
  needs every volume on shared storage;
- running and `restart`: shut down here, move, start on the target;
- running otherwise: refused, naming the parameter that would allow it.

`decide` raises ParamError naming the parameter at fault: the API answers 400
with it, the task (which checks again when it runs, the guest may have
changed state since) reports the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from corral.cluster import keys, volume_moves
from corral.cluster.errors import ParamError
from corral.cluster.guest_driver import DriverInfo, GuestDriver
from corral.cluster.store_api import StoreAPI

Mode = Literal["offline", "restart", "live"]
KIND = {"lxc": "CT", "qemu": "VM"}


@dataclass(frozen=True)
class Decision:
    mode: Mode
    copies: dict[str, str]  # config key -> volume ID copied to the target


def kind(type: str) -> str:
    return KIND.get(type, "guest")


def decide(
    info: DriverInfo,
    vmid: int,
    *,
    running: bool,
    online: bool,
    restart: bool,
    copies: dict[str, str],
) -> Mode:
    """The migration mode, or ParamError naming the parameter that is wrong."""
    what = f"{kind(info.type)} {vmid}"
    if not running:
        return "offline"
    if online and info.can_live_migrate:
        if copies:
            raise ParamError.one(
                "online",
                f"can't live-migrate {what} with local disks ({', '.join(sorted(copies))}): "
                "put them on shared storage or migrate offline",
            )
        return "live"
    if restart:
        return "restart"
    if online:
        raise ParamError.one("online", f"{info.type} live migration is currently not implemented")
    if info.can_live_migrate:
        raise ParamError.one("online", f"{what} is running - use online migration")
    raise ParamError.one("restart", f"{what} is running - use restart migration")


def plan(
    store: StoreAPI,
    driver: GuestDriver,
    rec: dict[str, Any],
    config: dict[str, Any],
    target: str,
    *,
    running: bool,
    online: bool,
    restart: bool,
) -> Decision:
    """Check that the guest can move to `target` now, and how (ParamError if not)."""
    vmid = int(rec["vmid"])
    if store.get(keys.node_alive(target)) is None:
        raise ParamError.one("target", f"target node '{target}' is offline")
    copies, blockers = volume_moves.plan(store, driver, config, target)
    if blockers:
        raise ParamError.one(
            "target",
            f"can't migrate {kind(rec['type'])} {vmid} to '{target}': "
            f"{', '.join(map(str, blockers))}",
        )
    mode = decide(driver.info, vmid, running=running, online=online, restart=restart, copies=copies)
    return Decision(mode, copies)


def preconditions(
    store: StoreAPI, driver: GuestDriver, config: dict[str, Any], *, node: str, target: str | None
) -> dict[str, Any]:
    """Proxmox's `GET .../migrate` answer, less `running` (the caller knows it)."""
    allowed, not_allowed = [], {}
    online = sorted(kv.key.split("/", 1)[1] for kv in store.range(keys.NODE_ALIVE))
    for other in online:
        if other == node or (target and other != target):
            continue
        blockers = volume_moves.plan(store, driver, config, other)[1]
        if blockers:
            not_allowed[other] = {"unavailable_storages": sorted({b.storage for b in blockers})}
        else:
            allowed.append(other)
    local_disks = []
    for key, volid in sorted(driver.volumes_of(config).items()):
        conf = store.get_value(keys.storage(volid.split(":", 1)[0])) or {}
        if not volume_moves.shared(conf):
            local_disks.append({"volid": volid, "drivename": key, "is_unused": 0})
    return {
        "allowed_nodes": allowed,
        "not_allowed_nodes": not_allowed,
        "local_disks": local_disks,
        "local_resources": [],
        "mapped-resources": [],
    }
