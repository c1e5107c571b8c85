"""An in-memory guest driver for testing the common flow (as nova/virt/fake.py).

Real drivers are tested against real LXC and QEMU in tests/lxc and tests/kvm;
this one lets the flow's own rules (digest, pending, locks, order, undo) be
tested fast and deterministically.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from corral.cluster import keys
from corral.cluster.errors import CommandFailed, Conflict
from corral.cluster.guest_driver import DriverInfo, GuestDriver, LogFn, VolumeAccess
from corral.cluster.schema import Param, PropertyFormat, Schema
from corral.cluster.store_api import StoreAPI
from corral.cluster.tasks import TaskWorker

NET = PropertyFormat({"name": Param("string"), "bridge": Param("string", optional=True)})


class FakeDriver(GuestDriver):
    info = DriverInfo(type="lxc", live_config=frozenset({"memory", "cores", "description"}))

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.guests: dict[int, dict[str, Any]] = {}
        self.calls: list[tuple[str, int]] = []
        self.fail_create = False
        self.lock = threading.Lock()

    def config_schema(self) -> Schema:
        return Schema(
            {
                "hostname": Param("string", optional=True, format="dns-name", hotplug=False),
                "memory": Param("integer", optional=True, minimum=16, default=512),
                "cores": Param("integer", optional=True, minimum=1, maximum=128),
                "net0": Param("string", optional=True, format=NET, hotplug=False),
                "description": Param("string", optional=True, format="multiline"),
                "protection": Param("boolean", optional=True),
                "ostemplate": Param("string", optional=True),
                "password": Param("string", optional=True, secret=True),
                "rootfs": Param("string", optional=True),
            }
        )

    def create(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn, params: Any
    ) -> dict[str, Any]:
        self.calls.append(("create", vmid))
        if self.fail_create:
            raise CommandFailed(cmd="tar", stderr="unexpected end of archive")
        self.guests[vmid] = {"status": "stopped", "config": dict(config)}
        log(f"created {vmid}")
        storage = str(config.get("rootfs") or "local:1").split(":", 1)[0]
        return {**config, "rootfs": f"{storage}:subvol-{vmid}-disk-0,size=1G"}

    def start(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        volumes: VolumeAccess,
        log: LogFn,
        ready: Callable[[], None] | None = None,
    ) -> None:
        if ready is not None:
            ready()
        self.calls.append(("start", vmid))
        if self.guests[vmid].get("status") == "running":
            raise Conflict(f"guest {vmid} already running")
        self.guests[vmid].update(status="running", config=dict(config))

    def stop(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        log: LogFn,
        ready: Callable[[], None] | None = None,
    ) -> None:
        if ready is not None:
            ready()
        self.calls.append(("stop", vmid))
        self.guests[vmid]["status"] = "stopped"

    def shutdown(
        self, vmid: int, config: dict[str, Any], *, timeout: int, force_stop: bool, log: LogFn
    ) -> None:
        self.calls.append(("shutdown", vmid))
        self.guests[vmid]["status"] = "stopped"

    def suspend(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        if self.guests[vmid]["status"] != "running":
            raise Conflict(f"CT {vmid} not running")
        self.guests[vmid]["status"] = "paused"

    def resume(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        self.guests[vmid]["status"] = "running"

    def destroy(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        self.calls.append(("destroy", vmid))
        del self.guests[vmid]

    def status(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        g = self.guests.get(vmid)
        if g is None:
            return {"status": "stopped"}
        paused = {"qmpstatus": "paused"} if g["status"] == "paused" else {}
        return {
            **paused,  # as Proxmox reports a suspended guest: running, paused
            "status": "running" if paused else g["status"],
            "cpu": 0.0,
            "mem": 1 << 20,
            "maxmem": int(g["config"].get("memory", 512)) << 20,
            "uptime": 1,
        }

    def running(self) -> set[int]:
        return {v for v, g in self.guests.items() if g["status"] in ("running", "paused")}

    def apply_live(
        self,
        vmid: int,
        old: dict[str, Any],
        new: dict[str, Any],
        *,
        volumes: VolumeAccess,
        log: LogFn,
    ) -> set[str]:
        changed = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
        applied = changed & self.info.live_config
        for key in applied:
            self.guests[vmid]["config"][key] = new.get(key)
        return applied

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
        volid = str(config[disk]).split(",")[0]
        return {**config, disk: f"{volid},size={size >> 30}G"}

    # -- moving between nodes ------------------------------------------------------
    def volumes_of(self, config: dict[str, Any]) -> dict[str, str]:
        return {"rootfs": str(config["rootfs"]).split(",")[0]} if config.get("rootfs") else {}

    def adopt(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        self.calls.append(("adopt", vmid))
        self.guests.setdefault(vmid, {"status": "stopped", "config": dict(config)})

    def release(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        self.calls.append(("release", vmid))
        del self.guests[vmid]


def fake_node(
    store: StoreAPI, name: str, *, address: str = "127.0.0.1", free_gib: int = 15
) -> tuple[FakeDriver, TaskWorker]:
    """A live node as placement sees it (info, alive and status records, 16 GiB with
    `free_gib` free) with its fake driver and a started task worker: stop the worker."""
    driver = FakeDriver(node=name, data_dir="/nonexistent")
    store.put(keys.node_info(name), {"node": name, "address": address})
    store.put(keys.node_alive(name), {"since": 0})
    status = {"maxmem": 16 << 30, "mem": (16 - free_gib) << 30, "cpu": 0.1}
    store.put(keys.node_status(name), status)
    worker = TaskWorker(store, name)
    worker.context = {"drivers": {"lxc": driver}, "volumes": object()}
    worker.start()
    return driver, worker
