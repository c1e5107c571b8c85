"""The QEMU/KVM guest driver: VMs through libvirt, one connection per driver.

The VM's config lives in etcd; libvirt only holds what runs. `start`
renders the domain XML from the current config (corral.kvm.xml_domain),
defines it and boots it, so a pending change is simply in the next XML.
Domains are named PREFIX+VMID (`corral-100`; tests use their own prefix),
which is how `running()` tells corral's domains from anybody else's.

QEMU processes are not children of the daemon: they outlive a restart of
corrald, and a fresh driver finds them through libvirt.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import string
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any

import libvirt

from corral.cluster import bridges, hostinfo
from corral.cluster.errors import (
    CommandFailed,
    Conflict,
    CorralError,
    NotSupported,
    ParamError,
)
from corral.cluster.guest_driver import DriverInfo, GuestDriver, LogFn, Probe, VolumeAccess
from corral.cluster.schema import Schema, format_size, new_volume_size
from corral.cluster.undo import Reverter
from corral.kvm import backup_job, cloudinit, snapshot_steps
from corral.kvm import config as cfg
from corral.kvm.figures import Figures
from corral.kvm.libvirt_conn import Libvirt
from corral.kvm.xml_base import Facts
from corral.kvm.xml_chars import serial_log, serial_socket
from corral.kvm.xml_disks import target_dev
from corral.kvm.xml_domain import render
from corral.kvm.xml_firmware import EFI_VARS_SIZE, domain_uuid, vars_template
from corral.kvm.xml_graphics import has_vnc
from corral.kvm.xml_nics import interface

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # the first start in a fresh embed root probes QEMU
STOP_TIMEOUT = 60.0
MIGRATE_TIMEOUT = 3600.0
KVM_MISSING = (
    "KVM virtualisation configured, but not available. Either disable in VM "
    "configuration (kvm: 0) or enable VT-x/AMD-V on the node"
)
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)


def host_memory_mib() -> int:
    with open("/proc/meminfo") as fh:
        return hostinfo.parse_meminfo(fh.read()).get("MemTotal", 0) >> 20


def check_memory(config: dict[str, Any], *, host_mib: int, node: str) -> None:
    mib = int(cfg.value(config, "memory"))
    if host_mib and mib > host_mib:
        raise ParamError.one("memory", f"{mib} MiB is more than node '{node}' has ({host_mib} MiB)")


def check_kvm(config: dict[str, Any], *, usable: bool, reason: str) -> None:
    """`kvm: 1` (the default) on a node without usable hardware virtualization."""
    if cfg.value(config, "kvm") and not usable:
        msg = f"{KVM_MISSING} ({reason})"
        raise ParamError({"kvm": msg}, message=msg)


class QemuDriver(GuestDriver):
    info = DriverInfo(
        type="qemu", live_config=cfg.LIVE_KEYS, can_suspend=True, can_live_migrate=True
    )

    def __init__(
        self, *, node: str, data_dir: str, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(node=node, data_dir=data_dir, options=options)
        self.uri = str(self.options.get("libvirt_uri") or "qemu:///system")
        self.prefix = str(self.options.get("domain_prefix", "corral-"))
        self.mac_seed = str(self.options.get("mac_seed", ""))
        self.emulator = str(self.options.get("qemu_emulator", "/usr/bin/qemu-system-x86_64"))
        self.vnc_listen = str(self.options.get("vnc_listen", "127.0.0.1"))
        self.run_dir = os.path.join(data_dir, "qemu")
        # Exists before any start here: a guest migrating in puts its sockets there.
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self.lv = Libvirt(self.uri)
        self._figures = Figures(self.lv, self.uri, self.prefix)
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._kvm: tuple[bool, str] | None = None

    def close(self) -> None:
        self.lv.close()

    # -- declarations ----------------------------------------------------------
    def config_schema(self) -> Schema:
        return cfg.SCHEMA

    def probe(self) -> Probe:
        if not os.access(self.emulator, os.X_OK):
            return Probe(False, f"{self.emulator} is missing (qemu-system-x86)")
        try:
            self.lv.open(timeout=25)
        except CorralError as err:
            return Probe(False, str(err))
        usable, reason = self._kvm_usable()
        details = {"uri": self.uri, "kvm": usable, "kvm_reason": reason}
        if hostinfo.cgroups_above_namespace():
            log.warning("VMs on this node: %s", hostinfo.VM_RECONNECT_LIMIT)
            details["nested_limit"] = hostinfo.VM_RECONNECT_LIMIT
        return Probe(True, details=details)

    def check_create(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        params: Mapping[str, Any],
        volumes: VolumeAccess | None,
    ) -> None:
        """Cheap checks before a create task is queued (bad input: 400, nothing made)."""
        check_memory(config, host_mib=host_memory_mib(), node=self.node)
        self._check_storages(config, volumes, here=False)
        self._render_check(vmid, config)

    # -- helpers -----------------------------------------------------------------
    def _name(self, vmid: int) -> str:
        return f"{self.prefix}{int(vmid)}"

    def _uuid(self, vmid: int) -> str:
        # Stable per VM: re-defining a domain with another UUID is refused.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral-kvm:{self.mac_seed}:{vmid}"))

    def _lock(self, vmid: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(vmid, threading.Lock())

    def _kvm_usable(self) -> tuple[bool, str]:
        if self._kvm is None:
            with open("/proc/cpuinfo") as fh:
                flags = hostinfo.parse_cpuinfo(fh.read())["_flags"]
            self._kvm = hostinfo.kvm_usable(flags)
        return self._kvm

    def _macs(self, vmid: int, config: dict[str, Any]) -> dict[int, str]:
        return {i: bridges.guest_mac(vmid, i, self.mac_seed) for i in cfg.parse_nets(config)}

    def _facts(self, vmid: int, config: dict[str, Any], **kw: Any) -> Facts:
        return Facts(
            vmid=vmid,
            name=self._name(vmid),
            uuid=self._uuid(vmid),
            node=self.node,
            run_dir=self.run_dir,
            emulator=self.emulator,
            macs=self._macs(vmid, config),
            vnc_listen=self.vnc_listen,
            **kw,
        )

    def _render_check(self, vmid: int, config: dict[str, Any]) -> None:
        """Render with stand-in paths: every rule of the renderers, no volume touched."""
        config = cfg.VmConfig.parse(config)
        fake = {"kind": "file", "path": "/dev/null", "format": "raw"}
        disks = {k: fake for k in (*cfg.DISK_KEYS, "efidisk0") if config.get(k)}
        for key, disk in cfg.parse_disks(config).items():
            if disk["file"] in ("none", "cdrom"):
                disks.pop(key)
        files = {k: "/dev/null" for k in ("kernel", "initrd") if config.get(k)}
        self._render(vmid, config, disks, files)

    def _render(
        self, vmid: int, config: dict[str, Any], disks: dict[str, Any], files: dict[str, str]
    ) -> str:
        """The XML with a stand-in for the cloud-init ISO (built only at start)."""
        slot = cloudinit.slot(config)
        if slot is not None:
            disks = {**disks, slot: {"kind": "file", "path": "/dev/null", "format": "raw"}}
        return render(config, disks, self._facts(vmid, config, files=files, cloudinit=slot))

    def _check_storages(
        self, config: dict[str, Any], volumes: VolumeAccess | None, *, here: bool
    ) -> None:
        """New disks go to storages that take `images` (with `here`, usable on this node)."""
        if volumes is None:
            return
        for key in (*cfg.DISK_KEYS, "efidisk0"):
            if not config.get(key):
                continue
            disk = cfg.parse(key, cfg.EFIDISK if key == "efidisk0" else cfg.DISK, config[key])
            file = str(disk["file"])
            if new_volume_size(file) is not None:
                volumes.check_volume(key, file, content="images", here=here, new=True)

    def _resolve(
        self, config: dict[str, Any], volumes: VolumeAccess
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Volume IDs -> how QEMU reaches them; kernel/initrd -> local files."""
        disks: dict[str, dict[str, Any]] = {}
        wanted = {k: cfg.volume_of(d) for k, d in cfg.parse_disks(config).items()}
        if config.get("efidisk0"):
            wanted["efidisk0"] = cfg.volume_of(
                cfg.parse("efidisk0", cfg.EFIDISK, config["efidisk0"])
            )
        for key, volid in wanted.items():
            if volid is None:
                continue
            try:
                disks[key] = dict(volumes.qemu_disk(volid))
            except CorralError as err:
                raise ParamError.one(key, f"{volid}: {err}") from None
        files: dict[str, str] = {}
        for key in ("kernel", "initrd"):
            if config.get(key):
                try:
                    path = volumes.file_path(str(config[key]))
                except CorralError as err:
                    raise ParamError.one(key, f"{config[key]}: {err}") from None
                if not os.path.isfile(path):
                    raise ParamError.one(key, f"{config[key]} does not exist")
                files[key] = path
        return disks, files

    def _domain(self, vmid: int) -> libvirt.virDomain | None:
        return self.lv.domain(self._name(vmid))

    def _active(self, dom: libvirt.virDomain | None) -> bool:
        return dom is not None and bool(self.lv.run("isActive", dom.isActive))

    def _state(self, dom: libvirt.virDomain) -> int:
        return int(self.lv.run("state", dom.state)[0])

    def _wait_inactive(self, dom: libvirt.virDomain, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._active(dom):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _run_files(self, vmid: int) -> list[str]:
        probe = Facts(vmid=vmid, name="", uuid="", run_dir=self.run_dir)
        out = [os.path.join(self.run_dir, f"{vmid}.cloudinit.iso")]
        for i in range(cfg.MAX_SERIAL):
            out += [serial_socket(probe, i), serial_log(probe, i)]
        return out

    def serial_paths(self, vmid: int, index: int = 0) -> tuple[str, str]:
        """(socket, log) of `serialN: socket` (for `qm terminal`-like tools and tests)."""
        probe = Facts(vmid=vmid, name="", uuid="", run_dir=self.run_dir)
        return serial_socket(probe, index), serial_log(probe, index)

    # -- lifecycle -----------------------------------------------------------------
    def create(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        volumes: VolumeAccess,
        log: LogFn,
        params: Mapping[str, Any],
    ) -> dict[str, Any]:
        config = cfg.SCHEMA.validate(config, partial=True)
        check_memory(config, host_mib=host_memory_mib(), node=self.node)
        self._check_storages(config, volumes, here=True)
        self._render_check(vmid, config)
        with self._lock(vmid), Reverter() as undo:
            if self._domain(vmid) is not None:
                raise Conflict(f"VM {vmid} already exists on node '{self.node}'")
            for key in ("efidisk0", *cfg.DISK_KEYS):
                if config.get(key):
                    config[key] = self._alloc_disk(vmid, key, config, volumes, undo, log)
            if config.get("vmgenid") == "1":  # a fixed one from now on, as Proxmox does
                config["vmgenid"] = str(uuid.uuid4())
            for index, net in cfg.parse_nets(config).items():
                if not net.get("macaddr"):  # written back, as Proxmox does
                    net["macaddr"] = bridges.guest_mac(vmid, index, self.mac_seed)
                    config[f"net{index}"] = cfg.NET.print(net)
            disks, files = self._resolve(config, volumes)  # named volumes must exist
            self._render(vmid, config, disks, files)
            undo.success()
        return config

    def _alloc_disk(
        self,
        vmid: int,
        key: str,
        config: dict[str, Any],
        volumes: VolumeAccess,
        undo: Reverter,
        log: LogFn,
    ) -> str:
        """Allocate `STORAGE:SIZE` for one disk key; returns the key's new value."""
        efi = key == "efidisk0"
        fmt_ = cfg.EFIDISK if efi else cfg.DISK
        disk = cfg.parse(key, fmt_, config[key])
        size = new_volume_size(str(disk["file"]))
        if size is None:
            return str(config[key])
        storage = str(disk["file"]).partition(":")[0]
        fmt = disk.get("format")
        if efi:  # exactly the flash size OVMF expects, whatever was asked
            size = EFI_VARS_SIZE[str(disk.get("efitype") or "2m")]
            fmt = "raw"
        else:
            size = -(-size // (1 << 20)) << 20  # whole MiB: `size=` stays a short exact text
        try:
            volid = volumes.alloc(storage, vmid, size=size, fmt=fmt, content="images")
        except ParamError as err:
            reason = "; ".join(err.errors.values()) or str(err)
            raise ParamError.one(key, f"storage '{storage}': {reason}") from None
        undo.add(functools.partial(volumes.free, volid))
        if efi:
            self._init_efivars(key, volid, config, volumes)
        log(f"allocated {key} {volid} ({format_size(size)})")
        return fmt_.print({**disk, "file": volid, "size": format_size(size)})

    def _init_efivars(
        self, key: str, volid: str, config: dict[str, Any], volumes: VolumeAccess
    ) -> None:
        target = volumes.qemu_disk(volid)
        if target.get("kind") != "file":
            raise NotSupported(what="EFI vars on block storage")
        facts = self._facts(0, {})
        with open(vars_template(config, facts), "rb") as src, open(target["path"], "r+b") as dst:
            shutil.copyfileobj(src, dst)

    def start(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        volumes: VolumeAccess,
        log: LogFn,
        ready: Callable[[], None] | None = None,
    ) -> None:
        config = cfg.VmConfig.parse(config)  # once: MACs, bridges, XML and cloud-init read it
        usable, reason = self._kvm_usable()
        check_kvm(config, usable=usable, reason=reason)
        check_memory(config, host_mib=host_memory_mib(), node=self.node)
        with self._lock(vmid):
            if self._active(self._domain(vmid)):
                raise Conflict(f"VM {vmid} already running")
            disks, files = self._resolve(config, volumes)
            os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
            for path in self._run_files(vmid):
                if os.path.exists(path):
                    os.unlink(path)  # stale sockets from a crashed QEMU block its bind
            slot = cloudinit.slot(config)
            if slot is not None:
                iso = os.path.join(self.run_dir, f"{vmid}.cloudinit.iso")
                files_ = cloudinit.seed_files(config, vmid, self._macs(vmid, config))
                with open(iso, "wb") as fh:
                    fh.write(cloudinit.build_iso(files_))
                disks[slot] = {"kind": "file", "path": iso, "format": "raw"}
            for index, net in cfg.parse_nets(config).items():
                if net.get("bridge"):
                    bridges.ensure_bridge(net["bridge"])
                if net.get("firewall"):
                    log(f"net{index}: firewall=1 has no effect (no guest firewall on corral)")
            facts = self._facts(vmid, config, files=files, cloudinit=slot, vnc_password=_password())
            xml = render(config, disks, facts)

            def boot() -> None:
                conn = self.lv.conn()
                old = self.lv.find(facts.name)
                if old is not None and old.UUIDString() != domain_uuid(config, facts):
                    # The identity changed (smbios1 uuid): libvirt refuses a redefinition.
                    old.undefineFlags(UNDEFINE_FLAGS | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
                dom = conn.defineXML(xml)
                self.lv.remember(conn, dom)
                dom.create()

            if ready is not None:
                ready()
            self.lv.run(f"start VM {vmid}", boot, timeout=START_TIMEOUT)
            log(f"VM {vmid} started ({'KVM' if cfg.value(config, 'kvm') else 'TCG'})")

    def shutdown(
        self, vmid: int, config: dict[str, Any], *, timeout: int, force_stop: bool, log: LogFn
    ) -> None:
        with self._lock(vmid):
            dom = self._domain(vmid)
            if not self._active(dom):
                return
            assert dom is not None
            if self._state(dom) == libvirt.VIR_DOMAIN_PAUSED:
                if not force_stop:
                    raise Conflict(f"VM {vmid} is paused - cannot shutdown")
                self._destroy_domain(dom, vmid, log)
                return
            flags = libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
            if cfg.parse_opt(config, "agent", cfg.AGENT).get("enabled"):
                flags |= libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
            try:
                self.lv.run(f"shutdown VM {vmid}", dom.shutdownFlags, flags)
            except Conflict:
                return  # it stopped meanwhile
            if self._wait_inactive(dom, timeout):
                log(f"VM {vmid} shut down")
                return
            if not force_stop:
                raise CommandFailed(
                    cmd="shutdown", stderr=f"VM {vmid} did not stop within {timeout} s"
                )
            log(f"VM {vmid} did not shut down within {timeout} s; stopping it")
            self._destroy_domain(dom, vmid, log)

    def _destroy_domain(self, dom: libvirt.virDomain, vmid: int, log: LogFn) -> None:
        try:
            self.lv.run(f"stop VM {vmid}", dom.destroy, timeout=STOP_TIMEOUT)
        except Conflict:
            pass  # not running any more
        if not self._wait_inactive(dom, STOP_TIMEOUT):
            raise CommandFailed(cmd="stop", stderr=f"VM {vmid} still running")
        log(f"VM {vmid} stopped")

    def stop(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        log: LogFn,
        ready: Callable[[], None] | None = None,
    ) -> None:
        with self._lock(vmid):
            dom = self._domain(vmid)
            if self._active(dom):
                assert dom is not None
                if ready is not None:
                    ready()
                self._destroy_domain(dom, vmid, log)

    def _running_domain(self, vmid: int) -> libvirt.virDomain:
        dom = self._domain(vmid)
        if not self._active(dom):
            raise Conflict(f"VM {vmid} not running")
        assert dom is not None
        return dom

    def reset(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        with self._lock(vmid):
            dom = self._running_domain(vmid)
            self.lv.run(f"reset VM {vmid}", dom.reset, 0)
            log(f"VM {vmid} reset")

    def suspend(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        with self._lock(vmid):
            dom = self._running_domain(vmid)
            if self._state(dom) != libvirt.VIR_DOMAIN_PAUSED:
                self.lv.run(f"suspend VM {vmid}", dom.suspend)
            log(f"VM {vmid} paused")

    def resume(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        with self._lock(vmid):
            dom = self._running_domain(vmid)
            if self._state(dom) == libvirt.VIR_DOMAIN_PAUSED:
                self.lv.run(f"resume VM {vmid}", dom.resume)
            log(f"VM {vmid} resumed")

    def destroy(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        with self._lock(vmid):
            dom = self._domain(vmid)
            if self._active(dom):
                raise Conflict(f"VM {vmid} is running - destroy failed")
            self._undefine(dom, config)
            for key, volid in sorted(self.volumes_of(config).items()):
                if key in ("kernel", "initrd") or not cfg.owned(volid, vmid):
                    continue  # shared files and other VMs' disks are never freed
                try:
                    volumes.free(volid)
                except CorralError as err:
                    log(f"could not free {key} {volid}: {err}")
                    continue
                log(f"freed {key} {volid}")
            self._remove_run_files(vmid)
            log(f"VM {vmid} removed")

    def _undefine(self, dom: libvirt.virDomain | None, config: dict[str, Any]) -> None:
        if dom is None:
            return
        # An efidisk0 is a storage volume (freed with the disks); libvirt's own
        # vars copy (OVMF without efidisk0) goes with the domain.
        nvram = (
            libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM
            if config.get("efidisk0")
            else libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        )
        try:
            self.lv.run("undefine", dom.undefineFlags, UNDEFINE_FLAGS | nvram)
        except CorralError as err:
            if "not found" not in str(err).lower():
                raise

    def _remove_run_files(self, vmid: int) -> None:
        for path in self._run_files(vmid):
            if os.path.lexists(path):
                os.unlink(path)

    # -- state -----------------------------------------------------------------------
    def running(self) -> set[int]:
        def names() -> list[str]:
            flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
            return [d.name() for d in self.lv.conn().listAllDomains(flags)]

        out = set()
        for name in self.lv.run("list domains", names, timeout=60):
            rest = name[len(self.prefix) :]
            if name.startswith(self.prefix) and rest.isdigit():
                out.add(int(rest))
        return out

    def status(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        return self._figures.one(vmid, config)

    def status_many(
        self, items: list[tuple[int, dict[str, Any]]], *, cached: bool = False
    ) -> dict[int, dict[str, Any]]:
        """One libvirt call for every state; figures when due (see kvm/figures.py)."""
        return self._figures.many(items, cached=cached)

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
        applied = changed & cfg.META_KEYS
        dom = self._domain(vmid)
        if not self._active(dom):
            return applied
        assert dom is not None
        applied |= self._live_memory(vmid, dom, old, new, changed, log)
        for key in sorted(k for k in changed if k.startswith("net") and k in cfg.LIVE_KEYS):
            if self._live_nic(vmid, dom, key, old, new, log):
                applied.add(key)
        return applied

    def _live_memory(
        self,
        vmid: int,
        dom: libvirt.virDomain,
        old: dict[str, Any],
        new: dict[str, Any],
        changed: set[str],
        log: LogFn,
    ) -> set[str]:
        """Balloon to the new size within the memory the VM booted with."""
        keys = changed & {"memory", "balloon"}
        if not keys or old.get("balloon") == 0 or new.get("balloon") == 0:
            return set()  # no balloon device: the change waits for a restart
        memory = int(cfg.value(new, "memory"))
        max_kib = int(self.lv.run("maxMemory", dom.maxMemory))
        target = int(new.get("balloon") or memory) * 1024
        if memory * 1024 > max_kib:
            keys.discard("memory")  # growing past the boot size needs a restart
            target = min(target, max_kib)
        if not keys:
            return set()
        self.lv.run(
            f"set memory of VM {vmid}", dom.setMemoryFlags, target, libvirt.VIR_DOMAIN_AFFECT_LIVE
        )
        log(f"VM {vmid}: balloon target {target // 1024} MiB")
        return keys

    def _live_nic(
        self,
        vmid: int,
        dom: libvirt.virDomain,
        key: str,
        old: dict[str, Any],
        new: dict[str, Any],
        log: LogFn,
    ) -> bool:
        """link_down and rate change live; anything else (a new model, bridge...) waits."""
        if not old.get(key) or not new.get(key):
            return False  # hot-plugging NICs is not done (yet)
        before = cfg.parse(key, cfg.NET, old[key])
        after = cfg.parse(key, cfg.NET, new[key])
        live = {"link_down", "rate"}
        if {k: v for k, v in before.items() if k not in live} != {
            k: v for k, v in after.items() if k not in live
        }:
            return False
        index = int(key[3:])
        facts = self._facts(vmid, new)
        xml = ET.tostring(interface(index, after, facts), encoding="unicode")
        self.lv.run(
            f"update {key} of VM {vmid}", dom.updateDeviceFlags, xml, libvirt.VIR_DOMAIN_AFFECT_LIVE
        )
        log(f"VM {vmid}: {key} updated live")
        return True

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
        parsed = cfg.parse_disks(config).get(disk)
        volid = cfg.volume_of(parsed) if parsed else None
        if parsed is None or volid is None or cfg.is_cdrom(parsed):
            raise ParamError.one("disk", f"'{disk}' is not a disk of VM {vmid}")
        if size < volumes.size(volid):
            raise ParamError.one("size", "shrinking disks is not supported")
        with self._lock(vmid):
            dom = self._domain(vmid)
            if self._active(dom):
                assert dom is not None
                # QEMU grows the image itself (file or rbd) and tells the guest.
                self.lv.run(
                    f"resize {disk} of VM {vmid}",
                    dom.blockResize,
                    target_dev(disk, config),
                    size,
                    libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES,
                )
            else:
                volumes.resize(volid, size)
        config = dict(config)
        config[disk] = cfg.print_disk({**parsed, "size": format_size(size)})
        log(f"resized {disk} to {format_size(size)}")
        return config

    def console(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        """A fresh VNC password (the ticket) and where to connect."""
        if not has_vnc(config):
            raise NotSupported(what=f"VNC for VM {vmid} (vga: {config.get('vga')})")
        dom = self._running_domain(vmid)
        ticket = _password()

        def set_ticket() -> int:
            root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE))
            graphics = root.find("./devices/graphics[@type='vnc']")
            if graphics is None:
                raise NotSupported(what=f"VNC for VM {vmid}")
            graphics.set("passwd", ticket)
            dom.updateDeviceFlags(
                ET.tostring(graphics, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE
            )
            return int(graphics.get("port") or 0)

        port = self.lv.run(f"vncproxy VM {vmid}", set_ticket)
        return {"port": port, "ticket": ticket, "host": self.vnc_listen, "cert": ""}

    # -- moving between nodes ------------------------------------------------------------
    def volumes_of(self, config: dict[str, Any]) -> dict[str, str]:
        out = {}
        for key, disk in cfg.parse_disks(config).items():
            volid = cfg.volume_of(disk)
            if volid:
                out[key] = volid
        if config.get("efidisk0"):
            volid = cfg.volume_of(cfg.parse("efidisk0", cfg.EFIDISK, config["efidisk0"]))
            if volid:
                out["efidisk0"] = volid
        for i in range(cfg.MAX_UNUSED):
            if config.get(f"unused{i}"):
                out[f"unused{i}"] = str(config[f"unused{i}"])
        for key in ("kernel", "initrd"):
            if config.get(key):
                out[key] = str(config[key])
        return out

    def adopt(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        """Nothing to do: `start` defines the domain from the config every time."""

    def release(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        with self._lock(vmid):
            dom = self._domain(vmid)
            if self._active(dom):
                raise Conflict(f"VM {vmid} is running")
            if dom is not None:
                self.lv.run(
                    "undefine",
                    dom.undefineFlags,
                    UNDEFINE_FLAGS | libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM,
                )
            self._remove_run_files(vmid)
            log(f"VM {vmid} handed over (volumes kept)")

    def migrate_live(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        target_address: str,
        log: LogFn,
        target_data_dir: str | None = None,
    ) -> None:
        """Live migration with shared storage: libvirt moves RAM and device state,
        peer to peer from this node's libvirtd to the target's (`qemu+tcp://`).

        The serial sockets live under the node's data dir: when the target's is
        elsewhere, the domain goes over with its paths rewritten to the target's
        (the cloud-init ISO is made at start on the node: a VM with one needs the
        same data dir path on both nodes).
        """
        with self._lock(vmid):
            dom = self._running_domain(vmid)
            flags = (
                libvirt.VIR_MIGRATE_LIVE
                | libvirt.VIR_MIGRATE_PEER2PEER
                | libvirt.VIR_MIGRATE_PERSIST_DEST
                | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
                | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
                # corral has checked that every disk is on storage marked shared; libvirt
                # recognises only network file systems as shared and would refuse the rest.
                | libvirt.VIR_MIGRATE_UNSAFE
            )
            params: dict[str, Any] = {}
            target_run = os.path.join(target_data_dir, "qemu") if target_data_dir else None
            if target_run and os.path.normpath(target_run) != os.path.normpath(self.run_dir):
                secure = libvirt.VIR_DOMAIN_XML_SECURE
                live_xml = self.lv.run("XMLDesc", dom.XMLDesc,
                                       secure | libvirt.VIR_DOMAIN_XML_MIGRATABLE)  # fmt: skip
                saved_xml = self.lv.run("XMLDesc", dom.XMLDesc,
                                        secure | libvirt.VIR_DOMAIN_XML_INACTIVE)  # fmt: skip
                here = self.run_dir.rstrip("/") + "/"
                there = target_run.rstrip("/") + "/"
                params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = live_xml.replace(here, there)
                params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = saved_xml.replace(here, there)
            target_uri = f"qemu+tcp://{target_address}/system"
            params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{target_address}"
            started = time.monotonic()
            self.lv.run(
                f"migrate VM {vmid}",
                dom.migrateToURI3,
                target_uri,
                params,
                flags,
                timeout=MIGRATE_TIMEOUT,
            )
            log(f"VM {vmid} migrated to {target_uri} in {time.monotonic() - started:.1f} s")

    def renew_identity(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        """MACs derive from the VMID when unset: drop stored ones, and the SMBIOS UUID."""
        out = dict(config)
        for index, net in cfg.parse_nets(config).items():
            if net.pop("macaddr", None):
                out[f"net{index}"] = cfg.NET.print(net)
        if out.get("smbios1"):
            kept = [p for p in str(out["smbios1"]).split(",") if not p.startswith("uuid=")]
            if kept:
                out["smbios1"] = ",".join(kept)
            else:
                del out["smbios1"]
        out.pop("vmgenid", None)
        return out

    def backup_live(
        self,
        vmid: int,
        config: dict[str, Any],
        disks: dict[str, str],
        workdir: str,
        *,
        log: LogFn,
    ) -> dict[str, str]:
        devs = {key: target_dev(key, config) for key in disks}
        return backup_job.run(self, vmid, devs, workdir, log=log)

    # -- snapshot steps (corral.kvm.snapshot_steps) ------------------------------------
    def freeze(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> bool:
        return snapshot_steps.freeze(self, vmid, config, log=log)

    def thaw(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        snapshot_steps.thaw(self, vmid, config, log=log)

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
        if not snapshot_steps.snapshot_volume(
            self, vmid, volid, snap, op=op, running=running, volumes=volumes, log=log
        ):
            super().snapshot_volume(
                vmid, config, volid, snap, op=op, running=running, volumes=volumes, log=log
            )

    def save_vmstate(self, vmid: int, config: dict[str, Any], path: str, *, log: LogFn) -> None:
        snapshot_steps.save_vmstate(self, vmid, path, log=log)

    def restore_vmstate(
        self,
        vmid: int,
        config: dict[str, Any],
        path: str,
        *,
        volumes: VolumeAccess,
        log: LogFn,
    ) -> None:
        snapshot_steps.restore_vmstate(self, vmid, path, log=log)


def _password() -> str:
    # VNC's authentication uses at most 8 characters.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


__all__ = ["QemuDriver", "check_kvm", "check_memory"]
