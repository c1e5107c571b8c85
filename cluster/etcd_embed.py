"""A private etcd (the real binary) run and supervised by corrald.

With no etcd endpoints configured, a node keeps its cluster state in an etcd
of its own under DATA_DIR/etcd, listening on loopback only. If it dies it is
restarted with backoff; it dies with corrald (PR_SET_PDEATHSIG) so a killed
daemon never leaves an orphan holding the data directory.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()


def etcd_binary() -> str:
    path = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(path, os.X_OK):
        raise RuntimeError("etcd binary not found: install the etcd-server package")
    return path


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class EmbeddedEtcd:
    """One single-member etcd bound to 127.0.0.1:`client_port` (peer on `peer_port`)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        name: str,
        client_port: int = 2379,
        peer_port: int | None = None,
        address: str = "127.0.0.1",
        initial_cluster: str | None = None,
        state: str = "new",
    ) -> None:
        """`address`: where peers and other nodes reach this member (loopback for a
        single node). `initial_cluster`/`state`: as etcd's flags, for joining."""
        self.data_dir = Path(data_dir)
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port or client_port + 1
        self.address = address
        self.initial_cluster = initial_cluster
        self.initial_state = state
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.state = "stopped"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{_host(self.address)}:{self.peer_port}"

    @property
    def client_url(self) -> str:
        """The URL other nodes use to reach this member's client port."""
        return f"http://{_host(self.address)}:{self.client_port}"

    def argv(self) -> list[str]:
        clients = [self.endpoint]
        if self.address not in ("127.0.0.1", "localhost"):
            clients.append(self.client_url)
        initial = self.initial_cluster or f"{self.name}={self.peer_url}"
        return [
            etcd_binary(),
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            ",".join(clients),
            "--advertise-client-urls",
            ",".join(reversed(clients)),
            "--listen-peer-urls",
            self.peer_url,
            "--initial-advertise-peer-urls",
            self.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            self.initial_state,
            # Keep history bounded; watches that fall behind resync (store.Watch).
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10000",
            "--quota-backend-bytes",
            str(2 << 30),
            "--log-level",
            "warn",
            # Notice a dead leader within about a second, not etcd's default 10 beats.
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
        ]

    def _spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        logfile = open(self.data_dir.parent / "etcd.log", "ab")  # noqa: SIM115 - owned by child
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=logfile,
                stderr=logfile,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
        finally:
            logfile.close()
        self.state = "running"
        log.info("private etcd started pid=%s endpoint=%s", self.proc.pid, self.endpoint)

    def start(self, *, wait: float = 20.0) -> None:
        self._spawn()
        self.wait_healthy(wait)
        self._supervisor = threading.Thread(
            target=self._supervise, name="etcd-supervisor", daemon=True
        )
        self._supervisor.start()

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"etcd exited with {self.proc.returncode}; see "
                    f"{self.data_dir.parent / 'etcd.log'}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"etcd did not listen on {self.endpoint} within {timeout:.0f} s")

    def _supervise(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            proc = self.proc
            if proc is None:
                return
            code = proc.poll()
            if code is None:
                self._stop.wait(0.2)
                continue
            self.state = f"exited ({code}), restarting"
            log.warning("private etcd exited with %s; restarting in %.1f s", code, backoff)
            if self._stop.wait(backoff):
                return
            try:
                self._spawn()
                self.restarts += 1
                backoff = 0.5
            except OSError as err:
                log.error("cannot restart etcd: %s", err)
                backoff = min(backoff * 2, 10)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            self.state = "stopped"
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.state = "stopped"
        log.info("private etcd stopped")
