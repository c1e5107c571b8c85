"""A real single-node Ceph cluster under one directory: 1 mon, 1 mgr, 1 OSD on one address
(127.0.0.1 by default).

For test suites and `corral lab --ceph`: cephx on, BlueStore on a sparse file
(no device-mapper or spare disk needed), every port and path configurable so
clusters run side by side. All state lives in `dir`:

    ceph.conf  ceph.client.admin.keyring  mon.keyring  monmap
    mon/ceph-a/  mgr/ceph-x/  osd/ceph-0/  osd/ceph-0.block  log/  run/  pids/

`start()` bootstraps on first use and restarts the daemons of an existing
directory afterwards; every wait has a deadline and checks that the daemons
are still alive. `stop()` signals only the PIDs recorded here, and only while
their command line still names this cluster's ceph.conf.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from typing import Any

from corral.cluster.errors import CommandFailed, Unavailable
from corral.storage.cmd import run

GiB = 1 << 30
_CMD_TIMEOUT = 30.0
MON, MGR = "a", "x"


class CephCluster:
    def __init__(
        self,
        dir: str,
        *,
        mon_port: int = 3300,
        mon_v1_port: int = 6789,
        osd_ports: tuple[int, int] = (6800, 7300),
        osd_size: int = 10 * GiB,
        address: str = "127.0.0.1",
    ) -> None:
        self.dir = os.path.abspath(dir)
        # A lab's Ceph listens on the lab bridge's host address, which every lab
        # node (in its own network namespace) can reach; tests keep loopback.
        self.address = address
        self.mon_port = mon_port
        self.mon_v1_port = mon_v1_port
        self.osd_ports = osd_ports
        self.osd_size = osd_size
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- where things are ---------------------------------------------------------
    @property
    def conf_path(self) -> str:
        return os.path.join(self.dir, "ceph.conf")

    @property
    def keyring_path(self) -> str:
        return os.path.join(self.dir, "ceph.client.admin.keyring")

    @property
    def monhost(self) -> str:
        a = self.address
        return f"[v2:{a}:{self.mon_port},v1:{a}:{self.mon_v1_port}]"

    def _p(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    # -- commands ----------------------------------------------------------------------
    def ceph(
        self,
        *args: str,
        input: bytes | None = None,
        timeout: float = _CMD_TIMEOUT,
        raw: bool = False,
    ) -> Any:
        """`ceph` CLI as client.admin, JSON out (None when it prints nothing; raw: no JSON)."""
        argv = [
            "ceph",
            "--conf",
            self.conf_path,
            "--connect-timeout",
            str(int(timeout)),
            *(["--format", "json"] if not raw else []),
            *args,
        ]
        text = run(argv, input=input, timeout=timeout + 5).stdout.decode().strip()
        if raw:
            return text
        return json.loads(text) if text else None

    def _write_conf(self) -> None:
        fsid = self._fsid()
        d = self.dir
        daemon = (
            f"log_file = {d}/log/$name.log\nadmin_socket = {d}/run/$name.asok\n"
            f"pid_file = {d}/run/$name.pid\n"
        )
        text = f"""[global]
fsid = {fsid}
mon_host = {self.monhost}
public_addr = {self.address}
cluster_addr = {self.address}
ms_bind_ipv6 = false
ms_bind_port_min = {self.osd_ports[0]}
ms_bind_port_max = {self.osd_ports[1]}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 5
mon_data_avail_crit = 1
mgr_stats_period = 1

[mon]
mon_data = {d}/mon/ceph-$id
# One monitor has no one to wait for: commit map changes (snapshot ids, pools) at
# once instead of batching them for a second (~1 s per RBD snapshot otherwise).
paxos_propose_interval = 0.05
{daemon}
[mgr]
mgr_data = {d}/mgr/ceph-$id
keyring = {d}/mgr/ceph-$id/keyring
{daemon}
[osd]
osd_data = {d}/osd/ceph-$id
keyring = {d}/osd/ceph-$id/keyring
osd_objectstore = bluestore
bluestore_block_path = {d}/osd/ceph-$id.block
bluestore_block_create = true
bluestore_block_size = {self.osd_size}
bluestore_block_db_create = false
bluestore_block_wal_create = false
osd_memory_target = 939524096
{daemon}
[client]
keyring = {self.keyring_path}
"""
        # Atomically: a daemon reading a half-written file dies ("failed to fetch mon config").
        tmp = self.conf_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.conf_path)

    def _fsid(self) -> str:
        path = self._p("fsid")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write(str(uuid.uuid4()))
        with open(path) as f:
            return f.read().strip()

    # -- bootstrap ---------------------------------------------------------------------
    def _bootstrapped(self) -> bool:
        return os.path.exists(self._p("osd", "id"))

    def _mkfs_mon(self) -> None:
        mon_keyring = self._p("mon.keyring")
        authtool = "ceph-authtool"
        run(
            [
                authtool,
                "--create-keyring",
                mon_keyring,
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            ],
            timeout=_CMD_TIMEOUT,
        )
        run(
            [
                authtool,
                "--create-keyring",
                self.keyring_path,
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mds",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ],
            timeout=_CMD_TIMEOUT,
        )
        run([authtool, mon_keyring, "--import-keyring", self.keyring_path], timeout=_CMD_TIMEOUT)
        monmap = self._p("monmap")
        run(
            [
                "monmaptool",
                "--create",
                "--clobber",
                "--fsid",
                self._fsid(),
                "--addv",
                MON,
                self.monhost,
                monmap,
            ],
            timeout=_CMD_TIMEOUT,
        )
        run(
            [
                "ceph-mon",
                "--conf",
                self.conf_path,
                "--mkfs",
                "-i",
                MON,
                "--monmap",
                monmap,
                "--keyring",
                mon_keyring,
            ],
            timeout=60.0,
        )

    def _mkfs_mgr(self) -> None:
        os.makedirs(self._p("mgr", f"ceph-{MGR}"), exist_ok=True)
        self.ceph(
            "auth",
            "get-or-create",
            f"mgr.{MGR}",
            "mon",
            "allow profile mgr",
            "osd",
            "allow *",
            "mds",
            "allow *",
            "-o",
            self._p("mgr", f"ceph-{MGR}", "keyring"),
            raw=True,
        )

    def _mkfs_osd(self) -> str:
        osd_uuid = str(uuid.uuid4())
        key = (
            run(["ceph-authtool", "--gen-print-key"], timeout=_CMD_TIMEOUT).stdout.decode().strip()
        )
        out = self.ceph(
            "osd", "new", osd_uuid, "-i", "-", input=json.dumps({"cephx_secret": key}).encode()
        )
        osd_id = str(out["osdid"] if isinstance(out, dict) else out)
        data = self._p("osd", f"ceph-{osd_id}")
        os.makedirs(data, exist_ok=True)
        run(
            [
                "ceph-authtool",
                "--create-keyring",
                os.path.join(data, "keyring"),
                "--name",
                f"osd.{osd_id}",
                "--add-key",
                key,
            ],
            timeout=_CMD_TIMEOUT,
        )
        run(
            ["ceph-osd", "--conf", self.conf_path, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid],
            timeout=120.0,
        )
        with open(self._p("osd", "id"), "w") as f:
            f.write(osd_id)
        return osd_id

    # -- daemons -----------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self._p("log", f"{name}.out"), "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        finally:
            log.close()
        self._procs[name] = proc
        with open(self._p("pids", f"{name}.pid"), "w") as f:
            f.write(str(proc.pid))

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise Unavailable(
                    f"ceph daemon {name} exited with {proc.returncode}; see {self._p('log')}"
                )

    def _wait(self, what: str, ready: Any, deadline: float) -> Any:
        last: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                last = ready()
                if last:
                    return last
            except CommandFailed as exc:
                last = exc
            time.sleep(0.3)
        raise Unavailable(f"ceph: timed out waiting for {what} (last: {last})")

    def start(self, timeout: float = 120.0) -> CephCluster:
        """Bootstrap (first time) or restart the daemons; return once all PGs are clean."""
        deadline = time.monotonic() + timeout
        for sub in ("mon", "mgr", "osd", "log", "run", "pids"):
            os.makedirs(self._p(sub), exist_ok=True)
        try:
            fresh = not self._bootstrapped()
            self._write_conf()
            if fresh and not os.path.exists(self._p("mon", f"ceph-{MON}", "store.db")):
                self._mkfs_mon()
            conf = ["--conf", self.conf_path, "-f"]
            self._spawn("mon", ["ceph-mon", "-i", MON, *conf])
            self._wait("the monitor", lambda: self.ceph("mon", "stat", timeout=5), deadline)
            if fresh:
                self._mkfs_mgr()
            self._spawn("mgr", ["ceph-mgr", "-i", MGR, *conf])
            osd_id = self._mkfs_osd() if fresh else self._read(self._p("osd", "id"))
            self._spawn("osd", ["ceph-osd", "-i", osd_id, *conf])
            self.wait_healthy(deadline - time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def _status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.ceph("status", timeout=10)
        return st

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Until the mgr is up, the OSD is up and in, and every PG is active+clean."""

        def ready() -> bool:
            st = self._status()
            osd = st.get("osdmap", {})
            osd = osd.get("osdmap", osd)  # older releases nest it
            pgs = st.get("pgmap", {})
            clean = sum(
                s["count"] for s in pgs.get("pgs_by_state", []) if s["state_name"] == "active+clean"
            )
            return bool(
                st.get("mgrmap", {}).get("available")
                and osd.get("num_up_osds") == 1
                and osd.get("num_in_osds") == 1
                and clean == pgs.get("num_pgs", -1)
            )

        self._wait("a healthy cluster", ready, time.monotonic() + timeout)

    def create_pool(self, name: str, *, pg_num: int = 8, timeout: float = 60.0) -> None:
        """An RBD pool (created if missing), ready once its PGs are clean."""
        pools = self.ceph("osd", "pool", "ls") or []
        if name not in pools:
            self.ceph("osd", "pool", "create", name, str(pg_num), str(pg_num))
            self.ceph("osd", "pool", "application", "enable", name, "rbd")
        self.wait_healthy(timeout)

    # -- stopping ----------------------------------------------------------------------
    def _ours(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return self.conf_path.encode() in f.read()
        except OSError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`, to the daemons recorded in pids/."""
        pids: dict[str, int] = {}
        for fname in sorted(os.listdir(self._p("pids"))) if os.path.isdir(self._p("pids")) else []:
            try:
                pids[fname[: -len(".pid")]] = int(self._read(self._p("pids", fname)))
            except (OSError, ValueError):
                continue
        for name in ("osd", "mgr", "mon"):  # clients first, the monitor last
            pid = pids.get(name)
            if pid and self._ours(pid):
                self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, pid in pids.items():
            proc = self._procs.get(name)
            while self._ours(pid) and time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    break
                time.sleep(0.05)
            if self._ours(pid) and (proc is None or proc.poll() is None):
                self._signal(pid, signal.SIGKILL)
                if proc is not None:
                    proc.wait(10)
            elif proc is not None:
                proc.wait(10)  # reap: no <defunct> left behind
            os.unlink(self._p("pids", f"{name}.pid"))
        self._procs.clear()

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    @staticmethod
    def _read(path: str) -> str:
        with open(path) as f:
            return f.read().strip()
