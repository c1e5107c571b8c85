"""A node's VM figures: on demand (status/current, a task's end), and for the
node's 2 s round, which must cost little for many VMs: every state from one
libvirt call each round, the figures (QEMU monitor queries) of an idle VM every
FIGURES_EVERY rounds, as corral.lxc.status does for containers.
"""

from __future__ import annotations

import threading
from typing import Any

import libvirt

from corral.cluster.guest_driver import BUSY_CPU, FIGURES_EVERY
from corral.cluster.schema import parse_size
from corral.kvm import config as cfg
from corral.kvm import stats
from corral.kvm.libvirt_conn import Libvirt
from corral.kvm.xml_disks import target_dev
from corral.kvm.xml_nics import tap_name


class Figures:
    """Status entries (Proxmox's status/current fields) of the VMs of one driver."""

    def __init__(self, lv: Libvirt, uri: str, prefix: str) -> None:
        self.lv, self.uri, self.prefix = lv, uri, prefix
        self._cpu = stats.CpuMeter()
        self._lock = threading.Lock()
        # The node's status round: its count, and vmid -> (domain ID, config, entry)
        # of each VM's last figures (many()).
        self._round = 0
        self._last: dict[int, tuple[int, dict[str, Any], dict[str, Any]]] = {}

    def _name(self, vmid: int) -> str:
        return f"{self.prefix}{int(vmid)}"

    def _stopped_entry(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        sockets, cores = int(cfg.value(config, "sockets")), int(cfg.value(config, "cores"))
        return {
            "vmid": vmid,
            "name": config.get("name") or f"VM{vmid}",
            "status": "stopped",
            "qmpstatus": "stopped",
            "cpus": int(config.get("vcpus") or sockets * cores),
            "maxmem": int(cfg.value(config, "memory")) << 20,
            "maxdisk": _boot_disk_size(config),
            "cpu": 0,
            "mem": 0,
            "disk": 0,
            "netin": 0,
            "netout": 0,
            "diskread": 0,
            "diskwrite": 0,
            "uptime": 0,
        }

    def _running_entry(
        self, vmid: int, config: dict[str, Any], out: dict[str, Any], raw: dict[str, Any]
    ) -> dict[str, Any]:
        """`out` (the stopped entry) filled with the figures of stats.collect()."""
        out["status"] = "running"
        out["qmpstatus"] = stats.QMPSTATUS.get(raw["state"], "running")
        out["cpu"] = round(self._cpu.sample(vmid, raw["cpu_ns"], out["cpus"]), 4)
        out["mem"] = stats.memory_used(raw)
        out["balloon"] = int(raw["cur_kib"]) * 1024
        out["diskread"], out["diskwrite"] = raw["diskread"], raw["diskwrite"]
        taps = [tap_name(vmid, i) for i, n in cfg.parse_nets(config).items() if n.get("bridge")]
        out["netin"], out["netout"] = stats.net_counters(taps)
        pid = stats.read_pid(stats.pid_file(self.uri, self.lv.root, self._name(vmid)))
        if pid is not None:
            out["pid"] = pid
            out["uptime"] = stats.process_uptime(pid)
        return out

    def one(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        """A VM's figures now (status/current, a task's end)."""
        out = self._stopped_entry(vmid, config)
        dom = self.lv.domain(self._name(vmid))
        if dom is None:
            return out
        devs = [target_dev(k, config) for k in cfg.parse_disks(config)]
        raw = self.lv.run(f"status VM {vmid}", _collect_if_active, dom, devs)
        if raw is None:
            return out
        return self._running_entry(vmid, config, out, raw)

    def many(
        self, items: list[tuple[int, dict[str, Any]]], *, cached: bool = False
    ) -> dict[int, dict[str, Any]]:
        """Every VM's state from ONE libvirt call (getAllDomainStats of the running
        domains, state group only: no QEMU monitor). The figures need the monitor
        (balloon and block queries, about 2 ms per VM under TCG, more than all the
        states together; libvirt's bulk balloon and block groups query each VM in
        turn all the same), so `cached` (the node's round) reads them only when due
        (FIGURES_EVERY, BUSY_CPU) and answers the last ones between, with this
        round's state. A VM restarted (new domain ID) or re-configured is read."""
        if not items:
            return {}
        states = self.lv.run("state of the running VMs", self._running_states)
        with self._lock:
            self._round += 1
            round_ = self._round
            if cached:  # forget VMs gone from the node
                wanted = {vmid for vmid, _ in items}
                for gone in [v for v in self._last if v not in wanted]:
                    del self._last[gone]
        out: dict[int, dict[str, Any]] = {}
        for vmid, config in items:
            found = states.get(self._name(vmid))
            if found is None:
                self._last.pop(vmid, None)
                out[vmid] = self._stopped_entry(vmid, config)
                continue
            dom, dom_id, state = found
            last = self._last.get(vmid)
            if (
                cached
                and last is not None
                and last[0] == dom_id
                and last[1] is config
                and last[2].get("cpu", 0) < BUSY_CPU
                and (vmid + round_) % FIGURES_EVERY
            ):
                entry = last[2]
                qmpstatus = stats.QMPSTATUS.get(state, "running")
                if entry["qmpstatus"] != qmpstatus:  # paused or resumed meanwhile
                    entry = {**entry, "qmpstatus": qmpstatus}
                    self._last[vmid] = (dom_id, config, entry)
                out[vmid] = entry
                continue
            devs = [target_dev(k, config) for k in cfg.parse_disks(config)]
            raw = self.lv.run(f"status VM {vmid}", _collect_if_active, dom, devs)
            entry = self._stopped_entry(vmid, config)
            if raw is not None:
                entry = self._running_entry(vmid, config, entry, raw)
                self._last[vmid] = (dom_id, config, entry)
            out[vmid] = entry
        return out

    def _running_states(self) -> dict[str, tuple[libvirt.virDomain, int, int]]:
        """Domain name -> (domain, its ID, libvirt state) of the running domains."""
        found = self.lv.conn().getAllDomainStats(
            libvirt.VIR_DOMAIN_STATS_STATE, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
        )
        return {
            dom.name(): (dom, dom.ID(), int(record.get("state.state", libvirt.VIR_DOMAIN_RUNNING)))
            for dom, record in found
            if dom.name().startswith(self.prefix)
        }


def _collect_if_active(dom: libvirt.virDomain, devs: list[str]) -> dict[str, Any] | None:
    try:
        if not dom.isActive():
            return None
        return stats.collect(dom, devs)
    except libvirt.libvirtError as err:
        if err.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            return None  # it stopped between the calls
        raise


def _boot_disk_size(config: dict[str, Any]) -> int:
    disks = {k: d for k, d in cfg.parse_disks(config).items() if not cfg.is_cdrom(d)}
    order = [d for d in str(cfg.parse_opt(config, "boot", cfg.BOOT).get("order") or "").split(";")]
    for key in [*order, *disks]:
        if key in disks and disks[key].get("size"):
            try:
                return parse_size(str(disks[key]["size"]), default_unit="G")
            except ValueError:
                return 0
    return 0
