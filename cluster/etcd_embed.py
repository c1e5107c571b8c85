"""A private etcd (the real binary) run and supervised by corrald.

With no etcd endpoints configured, a node keeps its cluster state in an etcd
of its own under DATA_DIR/etcd, listening on loopback only. If it dies it is
restarted with backoff; it dies with corrald (PR_SET_PDEATHSIG) so a killed
daemon never leaves an orphan holding the data directory.

corrald talks to it through a unix socket in DATA_DIR/etcd (`local_endpoint`),
a listener no other process can hold: a second node on the same host can never
reach the first one's etcd by mistake when both were given the same port. The
TCP ports (loopback, and the cluster address once the node is clustered) are
still served for tools and peers; when one is taken the start fails at once
naming the process that holds it ("etcd: port 2379 in use by pid N").
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
from collections.abc import Callable
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


def port_is_free(port: int, address: str = "127.0.0.1") -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


class PortInUse(RuntimeError):
    """A port the private etcd needs is held by another process."""


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP `port` (any address), from /proc/net/tcp{,6}."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    # local_address is HEXADDR:HEXPORT; state 0A is LISTEN.
                    if len(fields) > 9 and fields[3] == "0A":
                        if int(fields[1].rsplit(":", 1)[1], 16) == port:
                            found.add(fields[9])
        except OSError:
            continue
    return found


def port_holder(port: int) -> int | None:
    """The pid of a process listening on TCP `port`, if it can be found."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                try:
                    if os.readlink(fd.path) in targets:
                        return int(entry.name)
                except OSError:
                    continue
        except OSError:
            continue
    return None


def port_in_use_message(port: int) -> str:
    pid = port_holder(port)
    who = f"pid {pid}" if pid is not None else "another process"
    return (
        f"etcd: port {port} in use by {who}; another corrald (or etcd) on this host "
        f"uses it: give this node other ports (corrald --etcd-port N)"
    )


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
        # Absolute: the socket's unix:// URL must not depend on the working directory.
        self.data_dir = Path(data_dir).absolute()
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
        # Called (from the supervisor thread) when etcd cannot be restarted because
        # another process took its port: the daemon stops instead of looping.
        self.on_fatal: Callable[[str], None] | None = None

    @property
    def socket_dir(self) -> Path:
        return self.data_dir.parent

    @property
    def socket_path(self) -> Path:
        # etcd 3.4 wants unix URLs in host:port form and creates the socket named
        # "host:port" in its working directory (the etcd folder of the data dir).
        return self.socket_dir / f"client:{self.client_port}"

    @property
    def local_endpoint(self) -> str:
        """The unix socket only this member listens on: what corrald itself uses."""
        return f"unix://{self.socket_path}"

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
        clients = [f"unix://client:{self.client_port}", self.endpoint]
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
            ",".join(reversed(clients[1:])),
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
            # A member cut off for a while must not depose a healthy leader when it
            # returns (its term ran ahead): without pre-vote that costs the whole
            # cluster an election, seconds without quorum, and HA fences a node.
            "--pre-vote",
        ]

    def ports(self) -> list[tuple[str, int]]:
        """The TCP (address, port) pairs this member binds."""
        out = [("127.0.0.1", self.client_port), (self.address, self.peer_port)]
        if self.address not in ("127.0.0.1", "localhost"):
            out.append((self.address, self.client_port))
        return out

    def check_ports(self) -> None:
        """Raise PortInUse naming the holder of the first port that cannot be bound."""
        for address, port in self.ports():
            if not port_is_free(port, address):
                raise PortInUse(port_in_use_message(port))

    def _spawn(self) -> None:
        self.check_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if len(str(self.socket_path)) > 107:
            raise RuntimeError(
                f"etcd: the socket path {self.socket_path} is longer than a unix socket "
                "address allows (107 bytes): use a shorter data directory"
            )
        # A socket left by a killed etcd would make it fail to listen.
        self.socket_path.unlink(missing_ok=True)
        logfile = open(self.data_dir.parent / "etcd.log", "ab")  # noqa: SIM115 - owned by child
        try:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=logfile,
                stderr=logfile,
                stdin=subprocess.DEVNULL,
                cwd=self.socket_dir,
                preexec_fn=_die_with_parent,
            )
        finally:
            logfile.close()
        self.state = "running"
        log.info(
            "private etcd started pid=%s endpoint=%s socket=%s",
            self.proc.pid,
            self.endpoint,
            self.socket_path,
        )

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
                # Lost a race for a port after the check: say which one, as the check does.
                self.check_ports()
                raise RuntimeError(
                    f"etcd exited with {self.proc.returncode}; see "
                    f"{self.data_dir.parent / 'etcd.log'}"
                )
            # Only this member's own socket counts: a TCP answer on the port could be
            # another node's etcd.
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(0.5)
                    sock.connect(str(self.socket_path))
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
            except PortInUse as err:
                self.state = "stopped: port taken"
                log.error("private etcd cannot restart: %s", err)
                if self.on_fatal is not None:
                    self.on_fatal(str(err))
                return
            except (OSError, RuntimeError) as err:
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
