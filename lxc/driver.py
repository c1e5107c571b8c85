"""The LXC guest driver: containers through liblxc, one lxcpath per node.

State questions (is it running, its init pid) go through python3-lxc, which
answers quickly over the container's command socket. Anything that waits
(start, stop, shutdown, freeze) runs as an `lxc-*` subprocess with a timeout:
python3-lxc holds the GIL inside stop()/shutdown()/wait() and would freeze
every other thread of the daemon for the whole timeout.

Containers are run by liblxc's monitor process, not by corrald, so they
outlive a restart of the daemon; a fresh driver asks liblxc and reports them.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar, cast

# python3-lxc's C extension, imported directly: with the repo on sys.path (tests,
# editable installs) `import lxc` finds this very folder, not the binding.
import _lxc

from corral.cluster import bridges
from corral.cluster.errors import (
    CommandFailed,
    Conflict,
    NotFound,
    NotSupported,
    ParamError,
    Unavailable,
)
from corral.cluster.guest_driver import DriverInfo, GuestDriver, LogFn, Probe, VolumeAccess
from corral.cluster.schema import Schema, format_size, new_volume_size, parse_size
from corral.cluster.undo import Reverter
from corral.lxc import cgroup_warm, cgroups, credentials, nesting, orphans, rootfs, status
from corral.lxc import config as cfg
from corral.lxc.render import IDMAP_BASE, IDMAP_SIZE, Facts, cgroup_values, render, veth_name
from corral.storage.plugin import out_of_space

START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0


def _run(argv: list[str], *, timeout: float, ok: tuple[int, ...] = (0,)) -> int:
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(cmd=" ".join(argv), stderr=f"timed out after {timeout:g} s") from exc
    if proc.returncode not in ok:
        err = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        raise CommandFailed(cmd=" ".join(argv), stderr=err or f"exit status {proc.returncode}")
    return proc.returncode


F = TypeVar("F", bound=Callable[..., Any])


def _explained(fn: F) -> F:
    """In a task, a ParamError's message is all the log shows: say which
    parameter and why, not only "Parameter verification failed."."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ParamError as err:
            if not err.errors or err.message != ParamError.msg_fmt:
                raise
            text = "; ".join(f"{key}: {reason}" for key, reason in sorted(err.errors.items()))
            raise ParamError(err.errors, message=text) from None

    return cast(F, run)


class LxcDriver(GuestDriver):
    info = DriverInfo(type="lxc", live_config=cfg.LIVE_KEYS, can_suspend=True)

    def __init__(
        self, *, node: str, data_dir: str, options: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(node=node, data_dir=data_dir, options=options)
        self.lxcpath = os.path.join(data_dir, "lxc")
        os.makedirs(self.lxcpath, mode=0o755, exist_ok=True)
        self.mac_seed = str(self.options.get("mac_seed", ""))
        self._locks: dict[int, threading.Lock] = {}
        self._guard = threading.Lock()
        self._figures = status.Collector(self.lxcpath)  # live figures, cached per init

    # -- declarations ------------------------------------------------------------
    def config_schema(self) -> Schema:
        return cfg.SCHEMA

    def probe(self) -> Probe:
        missing = [t for t in ("lxc-start", "lxc-stop", "lxc-attach", "nsenter")
                   if shutil.which(t) is None]  # fmt: skip
        if missing:
            return Probe(False, f"missing tools: {', '.join(missing)}")
        return Probe(True, details={"lxcpath": self.lxcpath, "cgroup": cgroups.layout(),
                                    "vlan": bridges.vlan_filtering_supported()})  # fmt: skip

    def check_create(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        params: Mapping[str, Any],
        volumes: VolumeAccess | None,
    ) -> None:
        """Cheap checks before a create task is queued (bad input → 400, nothing made).

        They run on the node that answers the API call, which need not be the
        CT's node: only what the cluster-wide storage configs say is checked
        here; where a volume lives (node-local storage, the template file) is
        checked by create() on the CT's node."""
        if not config.get("rootfs") and not params.get("storage"):
            raise ParamError.one("rootfs", "property is missing and it is not optional")
        if not params.get("ostemplate"):
            raise ParamError.one("ostemplate", "property is missing and it is not optional")
        cfg.parse_mps(config)
        self._facts(vmid, config, rootfs_path="/", mounts=None)  # tag, paths
        if volumes is not None:
            self._check_storage(config, params, volumes, here=False)

    def _check_storage(
        self, config: dict[str, Any], params: Mapping[str, Any], volumes: VolumeAccess, *,
        here: bool,
    ) -> None:  # fmt: skip
        """Each volume's storage exists and takes container roots, and the template
        is a `vztmpl` volume (with `here`, on storage usable on this node).
        Errors name the config key (`rootfs`, `mp0`, `ostemplate`)."""
        if not config.get("rootfs") and params.get("storage"):
            config = {**config, "rootfs": f"{params['storage']}:4"}
        for key, vol in cfg.parse_mps(config).items():
            new = new_volume_size(vol["volume"]) is not None
            volumes.check_volume(key, vol["volume"], content="rootdir", here=here, new=new)
        template = str(params.get("ostemplate") or config.get("ostemplate") or "")
        volumes.check_volume("ostemplate", template, content="vztmpl", here=here)

    def _template_path(self, template: str, volumes: VolumeAccess) -> str:
        """The template's file on this node (ParamError naming `ostemplate` if absent)."""
        with _as_param("ostemplate"):
            path = str(volumes.file_path(template))
        if not os.path.isfile(path):
            raise ParamError.one(
                "ostemplate", f"template '{template}' does not exist on node '{self.node}'"
            )
        return path

    # -- helpers -----------------------------------------------------------------
    def _name(self, vmid: int) -> str:
        return str(int(vmid))

    def _dir(self, vmid: int) -> str:
        return os.path.join(self.lxcpath, self._name(vmid))

    def _ct(self, vmid: int) -> _lxc.Container:
        return _lxc.Container(self._name(vmid), self.lxcpath)

    def _lock(self, vmid: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(vmid, threading.Lock())

    def _facts(
        self, vmid: int, config: dict[str, Any], *, rootfs_path: str, mounts: dict[str, str] | None
    ) -> Facts:
        nets = cfg.parse_net(config)
        if mounts is None:  # only validating: any path will do
            mounts = {k: "/" for k in cfg.parse_mps(config) if k != "rootfs"}
        return Facts(
            vmid=vmid,
            lxcpath=self.lxcpath,
            rootfs_path=rootfs_path,
            host_cpus=os.cpu_count() or 1,
            cgroup=cgroups.layout(),
            mounts=mounts,
            hwaddrs={i: bridges.guest_mac(vmid, i, self.mac_seed) for i in nets},
            vlan_filtering=bool(any(n.get("tag") for n in nets.values()))
            and bridges.vlan_filtering_supported(),
        )

    def _mount_all(
        self, config: dict[str, Any], volumes: VolumeAccess
    ) -> tuple[str, dict[str, str]]:
        vols = cfg.parse_mps(config)
        if "rootfs" not in vols:
            raise ParamError.one("rootfs", "container has no rootfs")
        root = volumes.mount_rootdir(vols["rootfs"]["volume"])
        mounts = {k: volumes.mount_rootdir(v["volume"]) for k, v in vols.items() if k != "rootfs"}
        return root, mounts

    def _write_config(self, vmid: int, config: dict[str, Any], facts: Facts) -> None:
        text = render(config, facts)
        path = os.path.join(self._dir(vmid), "config")
        try:
            with open(path) as fh:
                if fh.read() == text:
                    return  # unchanged (most starts): no rename, liblxc's file stays
        except OSError:
            pass
        with open(path + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)

    # -- lifecycle ---------------------------------------------------------------
    @_explained
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
        template = params.get("ostemplate") or config.pop("ostemplate", None)
        if not template:
            raise ParamError.one("ostemplate", "property is missing and it is not optional")
        if not config.get("rootfs"):
            if not params.get("storage"):
                raise ParamError.one("rootfs", "property is missing and it is not optional")
            config["rootfs"] = f"{params['storage']}:4"
        for key in ("ostemplate", "password", "ssh-public-keys", "storage"):
            config.pop(key, None)
        if os.path.exists(self._dir(vmid)):
            raise Conflict(f"CT {vmid} already exists on node '{self.node}'")
        self._facts(vmid, config, rootfs_path="/", mounts=None)  # reject bad nets before work
        self._check_storage(config, {"ostemplate": template}, volumes, here=True)
        archive = self._template_path(str(template), volumes)
        with self._lock(vmid), Reverter() as undo:
            for key, vol in cfg.parse_mps(config).items():
                size = new_volume_size(vol["volume"])
                if size is None:
                    continue
                storage = vol["volume"].partition(":")[0]
                volid = volumes.alloc(storage, vmid, size=size, content="rootdir")
                undo.add(functools.partial(volumes.free, volid))
                log(f"allocated {key} {volid} ({format_size(size)})")
                config[key] = cfg.print_volume(
                    key, {**vol, "volume": volid, "size": format_size(size)}
                )
            root, mounts = self._mount_all(config, volumes)
            for volid in [v["volume"] for v in cfg.parse_mps(config).values()]:
                undo.add(functools.partial(volumes.unmount_rootdir, volid))
            unpriv = bool(cfg.value(config, "unprivileged"))
            problem = nesting.unprivileged_problem() if unpriv else None
            if problem:
                # Created all the same (it can run on another node); start says it again.
                log(f"WARNING: CT {vmid} cannot start on node '{self.node}': {problem}")
            log(f"extracting {os.path.basename(archive)}")
            rootvol = str(cfg.parse_mps(config)["rootfs"]["volume"])
            with out_of_space(rootvol.partition(":")[0], f"{rootvol} ({template} extracted)"):
                count = rootfs.unpack_template(archive, root, unprivileged=unpriv, log=log)
            log(f"extracted {count} entries into {root}")
            for index, net in cfg.parse_net(config).items():
                if not net.get("hwaddr"):
                    net["hwaddr"] = bridges.guest_mac(vmid, index, self.mac_seed)
                    config[f"net{index}"] = cfg.NET.print(net)
            owner = IDMAP_BASE if unpriv else 0
            if params.get("password"):
                credentials.set_root_password(root, str(params["password"]), uid=owner)
                log("set root's password")
            if params.get("ssh-public-keys"):
                credentials.add_root_keys(root, str(params["ssh-public-keys"]), uid=owner)
                log("installed root's SSH public keys")
            config.setdefault("arch", "amd64")
            config.setdefault("ostype", rootfs.detect_ostype(root))
            os.makedirs(self._dir(vmid), mode=0o755)
            undo.add(lambda: shutil.rmtree(self._dir(vmid), ignore_errors=True))
            self._write_config(
                vmid, config, self._facts(vmid, config, rootfs_path=root, mounts=mounts)
            )
            undo.success()
        return config

    @_explained
    def start(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        volumes: VolumeAccess,
        log: LogFn,
        ready: Callable[[], None] | None = None,
    ) -> None:
        if not os.path.isdir(self._dir(vmid)):
            raise NotFound(what=f"CT {vmid} on node '{self.node}'")
        # lxc-start's cgroup migrations wait out a grace period on a quiet node:
        # let it elapse while the start is recorded and prepared (cgroup_warm).
        cgroup_warm.WARMER.warm()
        with self._lock(vmid):
            # One liblxc handle for the whole start (each parses the config): its state
            # and init pid are asked of the monitor, not of the config it read, so the
            # config written below does not make it stale for them.
            ct = self._ct(vmid)
            if ct.running or orphans.orphan_pid(self._dir(vmid)):
                raise Conflict(f"CT {vmid} already running")
            if cfg.value(config, "unprivileged"):
                check_subids()
                problem = nesting.unprivileged_problem()
                if problem:
                    raise Unavailable(f"CT {vmid} cannot start on node '{self.node}': {problem}")
            root, mounts = self._mount_all(config, volumes)
            if cfg.value(config, "unprivileged"):
                for path in (root, *mounts.values()):
                    check_reachable(path)
            facts = self._facts(vmid, config, rootfs_path=root, mounts=mounts)
            self._write_config(vmid, config, facts)
            rootfs.write_identity(
                root, config, unprivileged=bool(cfg.value(config, "unprivileged"))
            )
            for index, net in cfg.parse_net(config).items():
                bridges.delete_link(veth_name(vmid, index))  # left by a crashed monitor
                if net.get("bridge"):
                    bridges.ensure_bridge(net["bridge"])
            if ready is not None:
                ready()
            argv = ["lxc-start", "-P", self.lxcpath, "-n", self._name(vmid), "-d"]
            try:
                _run(argv, timeout=START_TIMEOUT)
            except CommandFailed as err:
                raise CommandFailed(
                    cmd=" ".join(argv), stderr=f"{err.kwargs.get('stderr')}\n{self._log_tail(vmid)}"
                ) from err
            self._wait_state(vmid, {"RUNNING"}, START_TIMEOUT, ct=ct)
            pid = ct.init_pid
            orphans.record(self._dir(vmid), pid)  # found again if its monitor dies
            self._figures.started(vmid, pid)
            log(f"CT {vmid} started (pid {pid})")

    def _log_tail(self, vmid: int, lines: int = 15) -> str:
        try:
            with open(os.path.join(self._dir(vmid), "lxc.log"), errors="replace") as fh:
                return "".join(fh.readlines()[-lines:])
        except OSError:
            return ""

    def _state(self, vmid: int, ct: _lxc.Container | None = None) -> str:
        if not os.path.isdir(self._dir(vmid)):
            return "STOPPED"
        state = str((ct or self._ct(vmid)).state)
        if state == "STOPPED" and orphans.orphan_pid(self._dir(vmid)):
            return "RUNNING"  # its lxc monitor died; the container did not
        return state

    def _wait_state(
        self, vmid: int, want: set[str], timeout: float, *, ct: _lxc.Container | None = None
    ) -> bool:
        deadline = time.monotonic() + timeout
        # lxc-start -d / lxc-stop -k return about when the state changes: ask again
        # soon (1 ms, doubling), not a fixed 50 ms that the task would wait out.
        pause = 0.001
        while True:
            if self._state(vmid, ct) in want:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def shutdown(
        self, vmid: int, config: dict[str, Any], *, timeout: int, force_stop: bool, log: LogFn
    ) -> None:
        with self._lock(vmid):
            if self._state(vmid) == "STOPPED":
                return
            if self._state(vmid) == "FROZEN":
                self._thaw(vmid)
            argv = ["lxc-stop", "-P", self.lxcpath, "-n", self._name(vmid), "-t", str(int(timeout))]
            if not force_stop:
                argv.append("--nokill")
            # lxc-stop sends lxc.signal.halt, waits `timeout`, then kills unless --nokill.
            _run(argv, timeout=timeout + STOP_TIMEOUT, ok=(0, 1, 2))
            if not self._wait_state(vmid, {"STOPPED"}, 5.0 if not force_stop else STOP_TIMEOUT):
                raise CommandFailed(
                    cmd="shutdown", stderr=f"CT {vmid} did not stop within {timeout} s"
                )
            log(f"CT {vmid} shut down")

    def stop(
        self,
        vmid: int,
        config: dict[str, Any],
        *,
        log: LogFn,
        ready: Callable[[], None] | None = None,
    ) -> None:
        cgroup_warm.WARMER.warm()  # the monitor's cgroup moves as the CT stops: as for start
        with self._lock(vmid):
            if not os.path.isdir(self._dir(vmid)):
                return
            ct = self._ct(vmid)  # one handle for the checks and the wait: each parses the config
            stopped = str(ct.state) == "STOPPED"
            # Stopped for liblxc, yet its init may run on without its monitor.
            orphan = orphans.orphan_pid(self._dir(vmid)) if stopped else None
            if stopped and not orphan:
                return
            if ready is not None:
                ready()
            if orphan:
                if not orphans.kill(orphan, STOP_TIMEOUT):
                    raise CommandFailed(cmd="kill", stderr=f"CT {vmid} still running")
                log(f"CT {vmid} stopped (its lxc monitor had died)")
                return
            argv = ["lxc-stop", "-P", self.lxcpath, "-n", self._name(vmid), "-k"]
            _run(argv, timeout=STOP_TIMEOUT, ok=(0, 2))  # 2: was not running
            if not self._wait_state(vmid, {"STOPPED"}, STOP_TIMEOUT, ct=ct):
                raise CommandFailed(cmd=" ".join(argv), stderr=f"CT {vmid} still running")
            log(f"CT {vmid} stopped")

    def suspend(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        with self._lock(vmid):
            if self._state(vmid) != "RUNNING":
                raise Conflict(f"CT {vmid} not running")
            _run(["lxc-freeze", "-P", self.lxcpath, "-n", self._name(vmid)], timeout=STOP_TIMEOUT)
            if not self._wait_state(vmid, {"FROZEN"}, STOP_TIMEOUT):
                raise CommandFailed(cmd="lxc-freeze", stderr=f"CT {vmid} did not freeze")
            log(f"CT {vmid} frozen")

    def resume(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        with self._lock(vmid):
            self._thaw(vmid)
            log(f"CT {vmid} resumed")

    def _thaw(self, vmid: int) -> None:
        if self._state(vmid) not in ("FROZEN", "FREEZING"):
            return
        _run(["lxc-unfreeze", "-P", self.lxcpath, "-n", self._name(vmid)], timeout=STOP_TIMEOUT)
        if not self._wait_state(vmid, {"RUNNING"}, STOP_TIMEOUT):
            raise CommandFailed(cmd="lxc-unfreeze", stderr=f"CT {vmid} did not thaw")

    def destroy(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        with self._lock(vmid):
            if self._state(vmid) != "STOPPED":
                raise Conflict(f"CT {vmid} is running - destroy failed")
            for key, vol in cfg.parse_mps(config).items():
                volid = vol["volume"]
                if new_volume_size(volid) is not None:
                    continue  # never allocated
                volumes.unmount_rootdir(volid)
                if _owned(volid, vmid):
                    try:
                        volumes.free(volid)
                    except NotFound:
                        # Freed already: a destroy interrupted after it (its recovery
                        # runs it again) or removed by hand. Gone is what we want.
                        log(f"{key} {volid} was already freed")
                        continue
                    log(f"freed {key} {volid}")
            for index in cfg.parse_net(config):
                bridges.delete_link(veth_name(vmid, index))
            shutil.rmtree(self._dir(vmid), ignore_errors=True)
            log(f"CT {vmid} removed from {self.lxcpath}")

    # -- state -------------------------------------------------------------------
    def running(self) -> set[int]:
        names = _lxc.list_containers(active=True, defined=False, config_path=self.lxcpath)
        return {int(n) for n in names if n.isdigit()}

    def status(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        return self._figures.one(vmid, config)

    def status_now(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        return self._figures.one(vmid, config, walk=False)

    def status_many(
        self, items: list[tuple[int, dict[str, Any]]], *, cached: bool = False
    ) -> dict[int, dict[str, Any]]:
        """status() of many CTs in one pass; `cached` for the node's round (see
        corral.lxc.status: state every round, figures when due)."""
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
        live = changed & cfg.LIVE_KEYS
        limits = live & cfg.CGROUP_KEYS
        if limits:
            pid = int(self._ct(vmid).init_pid)
            if pid <= 0:
                raise Conflict(f"CT {vmid} not running")
            facts = Facts(vmid=vmid, lxcpath=self.lxcpath, rootfs_path="/",
                          host_cpus=os.cpu_count() or 1, cgroup=cgroups.layout())  # fmt: skip
            values = cgroup_values(new, facts)
            if "cores" in changed and not new.get("cores"):
                values["cpuset.cpus"] = f"0-{(os.cpu_count() or 1) - 1}"
            if "pidslimit" in changed and not int(cfg.value(new, "pidslimit") or 0):
                values["pids.max"] = "max"
            cgroups.write_limits(pid, values)
            log(f"CT {vmid}: cgroup limits updated ({', '.join(sorted(limits))})")
        return live

    @_explained
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
        vols = cfg.parse_mps(config)
        if disk not in vols:
            raise ParamError.one("disk", f"no such mount point '{disk}'")
        vol = vols[disk]
        current = max(parse_size(vol.get("size") or "0"), volumes.size(vol["volume"]))
        if size < current:
            raise ParamError.one("size", "shrinking disks is not supported")
        try:
            volumes.resize(vol["volume"], size)
        except NotSupported:
            # A subvol on a storage without quotas (a plain directory): its size
            # is advisory, as at allocation; record it, nothing to grow.
            if not vol["volume"].endswith(".subvol"):
                raise
            log(f"{disk}: the storage has no quota for {vol['volume']}; size recorded only")
        config = dict(config)
        config[disk] = cfg.print_volume(disk, {**vol, "size": format_size(size)})
        log(f"resized {disk} to {format_size(size)}")
        return config

    # -- moving between nodes -----------------------------------------------------
    def volumes_of(self, config: dict[str, Any]) -> dict[str, str]:
        return {
            key: vol["volume"]
            for key, vol in cfg.parse_mps(config).items()
            if new_volume_size(vol["volume"]) is None
        }

    @_explained
    def adopt(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        """Write this node's lxc config for a CT whose record moved here (its
        volumes already exist on shared storage). Nothing to do if it is known."""
        path = os.path.join(self._dir(vmid), "config")
        with self._lock(vmid):
            if os.path.isfile(path):
                return
            root, mounts = self._mount_all(config, volumes)
            facts = self._facts(vmid, config, rootfs_path=root, mounts=mounts)
            with Reverter() as undo:
                made = not os.path.isdir(self._dir(vmid))
                os.makedirs(self._dir(vmid), mode=0o755, exist_ok=True)
                if made:
                    undo.add(lambda: shutil.rmtree(self._dir(vmid), ignore_errors=True))
                self._write_config(vmid, config, facts)
                undo.success()
            log(f"CT {vmid} adopted on node '{self.node}' ({self.lxcpath})")

    def release(
        self, vmid: int, config: dict[str, Any], *, volumes: VolumeAccess, log: LogFn
    ) -> None:
        """Forget a stopped CT here (its lxc dir, veths) and keep its volumes."""
        with self._lock(vmid):
            if self._state(vmid) != "STOPPED":
                raise Conflict(f"CT {vmid} is running - stop it before moving it")
            for volid in self.volumes_of(config).values():
                volumes.unmount_rootdir(volid)
            for index in cfg.parse_net(config):
                bridges.delete_link(veth_name(vmid, index))
            shutil.rmtree(self._dir(vmid), ignore_errors=True)
            log(f"CT {vmid} released from node '{self.node}' (volumes kept)")

    def interfaces(self, vmid: int, config: dict[str, Any]) -> list[dict[str, Any]]:
        if self._state(vmid) == "STOPPED":
            raise Conflict(f"CT {vmid} not running")
        return cgroups.netns_addresses(int(self._ct(vmid).init_pid))

    def terminal(self, vmid: int, config: dict[str, Any]) -> list[str]:
        """A root login shell inside the CT (like `pct enter`): bash if it has one."""
        if self._state(vmid) != "RUNNING":
            raise Conflict(f"CT {vmid} not running")
        shell = "if [ -x /bin/bash ]; then exec /bin/bash -l; fi; exec /bin/sh -l"  # constant
        return ["lxc-attach", "-P", self.lxcpath, "-n", self._name(vmid), "--clear-env",
                "-v", "TERM=xterm-256color", "-v", "HOME=/root",
                "--", "/bin/sh", "-c", shell]  # fmt: skip

    def attach(self, vmid: int, argv: list[str], *, timeout: float = 30.0) -> str:
        """Run a command inside the container (lxc-attach), return its stdout."""
        cmd = ["lxc-attach", "-P", self.lxcpath, "-n", self._name(vmid), "--clear-env", "--", *argv]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CommandFailed(cmd=" ".join(cmd), stderr=f"timed out after {timeout:g} s") from exc
        if proc.returncode:
            raise CommandFailed(cmd=" ".join(cmd), stderr=proc.stderr.decode(errors="replace"))
        return proc.stdout.decode(errors="replace")

    def renew_identity(self, vmid: int, config: dict[str, Any]) -> dict[str, Any]:
        out = dict(config)
        for index, net in cfg.parse_net(config).items():
            net["hwaddr"] = bridges.guest_mac(vmid, index, self.mac_seed)
            out[f"net{index}"] = cfg.NET.print(net)
        return out

    # -- snapshot steps (the flow is corral.cluster.snapshots) ---------------------------
    def freeze(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> bool:
        """A running CT's processes are frozen (cgroup freezer) while its volumes
        are snapshotted: nothing writes in between, as Proxmox's `pct snapshot`."""
        if self._state(vmid) != "RUNNING":
            return False
        self.suspend(vmid, config, log=log)
        return True

    def thaw(self, vmid: int, config: dict[str, Any], *, log: LogFn) -> None:
        with self._lock(vmid):
            self._thaw(vmid)
        log(f"CT {vmid} thawed")


def check_subids(user: str = "root") -> None:
    """liblxc maps ids through newuidmap, which needs root's range in /etc/sub[ug]id
    (Proxmox's packages add `root:100000:65536`); say so instead of liblxc's riddle."""
    for path in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = open(path).read().split()
        except OSError:
            lines = []
        ok = False
        for line in lines:
            parts = line.split(":")
            if len(parts) == 3 and parts[0] == user and parts[1].isdigit() and parts[2].isdigit():
                start, count = int(parts[1]), int(parts[2])
                ok = ok or (start <= IDMAP_BASE and start + count >= IDMAP_BASE + IDMAP_SIZE)
        if not ok:
            raise Unavailable(
                f"unprivileged containers need '{user}:{IDMAP_BASE}:{IDMAP_SIZE}' in {path}"
            )


@contextmanager
def _as_param(key: str) -> Iterator[None]:
    """Storage errors about a volume become a 400 naming the config key."""
    try:
        yield
    except ParamError as err:
        if key in err.errors:
            raise
        reason = "; ".join(err.errors.values()) or str(err)
        raise ParamError.one(key, reason) from None
    except (NotFound, NotSupported) as err:
        raise ParamError.one(key, str(err)) from None


def _reachable(path: str, uid: int) -> bool:
    """Can `uid` (no groups) search `path`, ancestors and ACLs included? Asked as that
    uid: mode bits alone would miss ACLs."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
            "test", "-x", path]  # fmt: skip
    try:
        return subprocess.run(argv, capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return True  # cannot tell: let liblxc say it


def check_reachable(path: str, uid: int = IDMAP_BASE) -> None:
    """An unprivileged container's root (uid `uid` outside) must reach its rootfs and
    mount points, or liblxc aborts with "Could not access ..." in its log."""
    if shutil.which("setpriv") is None or _reachable(path, uid):
        return
    blocked = path
    parts = os.path.abspath(path).split("/")
    for i in range(2, len(parts) + 1):
        ancestor = "/".join(parts[:i])
        if not _reachable(ancestor, uid):
            blocked = ancestor
            break
    mode = oct(os.stat(blocked).st_mode & 0o777) if os.path.exists(blocked) else "missing"
    raise Unavailable(
        f"unprivileged containers cannot reach '{path}': '{blocked}' (mode {mode}) is not "
        f"searchable by uid {uid}; allow it (chmod o+x, or an ACL for uid {uid})"
    )


def _owned(volid: str, vmid: int) -> bool:
    """A volume named for this CT (`vm-101-disk-0`, `subvol-101-disk-0`, `101/...`)."""
    name = volid.partition(":")[2]
    return name.startswith(f"{vmid}/") or f"-{vmid}-disk-" in name


__all__ = ["LxcDriver", "check_subids"]
