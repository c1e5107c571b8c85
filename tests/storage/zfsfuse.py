"""A zfs-fuse daemon and a pool on a sparse file, for the zfspool contract tests.

zfs-fuse is one daemon per machine (its socket is /var/run/zfs/zfs_socket):
if one is already running it is used and left running; one started here is
stopped by its recorded PID. The pool is destroyed and its file removed even
when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from types import TracebackType

from corral.cluster.undo import Reverter

SOCKET = "/var/run/zfs/zfs_socket"


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace').strip()}")
    return proc


def _retry_busy(argv: list[str], timeout: float = 20) -> None:
    """zfs-fuse calls a just-used pool or dataset busy for a moment: retry that."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _run(argv)
            return
        except RuntimeError as exc:
            if "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _zfs_ready() -> bool:
    proc = subprocess.run(["zpool", "list", "-H"], capture_output=True, timeout=30, check=False)
    return proc.returncode == 0 or b"no pools available" in proc.stdout + proc.stderr


class ZfsFuse:
    def __init__(self, base: str, *, pool: str, size: int = 256 << 20) -> None:
        self.base = base
        self.pool = pool
        self.size = size
        self.mountpoint = os.path.join(base, "mnt")
        self.pidfile = os.path.join(base, "zfs-fuse.pid")
        self.pid: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._undo = Reverter()

    def __enter__(self) -> ZfsFuse:
        try:
            self._start_daemon()
            image = os.path.join(self.base, "pool.img")
            with open(image, "wb") as f:
                f.truncate(self.size)
            self._undo.add(lambda: os.unlink(image))
            # cachefile=none: the pool never enters zfs-fuse's shared zpool.cache, so a
            # run that dies midway leaves no pool for the next daemon to import.
            _run(["zpool", "create", "-o", "cachefile=none", "-m", self.mountpoint, self.pool,
                  image])  # fmt: skip
            self._undo.add(self._drop_pool)
            _run(["zfs", "create", f"{self.pool}/store"])
        except BaseException:
            self._undo.revert()
            raise
        return self

    def _drop_pool(self) -> None:
        try:
            _retry_busy(["zpool", "destroy", "-f", self.pool])
        except RuntimeError:
            # zfs-fuse can keep a dataset "busy" for good (see zfspool tests): export
            # still detaches the pool, and its file is removed next.
            _run(["zpool", "export", "-f", self.pool])

    def _start_daemon(self) -> None:
        if os.path.exists(SOCKET) and _zfs_ready():
            return  # someone else's daemon: use it, never stop it
        # In the foreground, as our child: stopped and reaped by us, no zombie left.
        log = open(os.path.join(self.base, "zfs-fuse.log"), "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [
                    "zfs-fuse",
                    "--no-daemon",
                    "--pidfile",
                    self.pidfile,
                    "--no-kstat-mount",
                    # No kernel-side caching of attributes and entries (the Debian zfsrc sets
                    # an hour): cached inodes keep a dataset "busy" long after its last use.
                    "--fuse-attr-timeout",
                    "0",
                    "--fuse-entry-timeout",
                    "0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        self.pid = self.proc.pid
        self._undo.add(self._stop_daemon)
        deadline = time.monotonic() + 30
        while not _zfs_ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"zfs-fuse exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("zfs-fuse did not answer within 30 s")
            time.sleep(0.1)

    def _stop_daemon(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        others = subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True,
                                timeout=30, check=False).stdout.split()  # fmt: skip
        if others:
            # Another run on this machine found our daemon and put its pool there:
            # stopping it would break that run. It stops the daemon never (not its
            # own), so this one is left running, the only thing left behind.
            warnings.warn(f"zfs-fuse {proc.pid} left running: pools {others} still use it",
                          stacklevel=1)  # fmt: skip
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._undo.revert()
