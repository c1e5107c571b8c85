"""A private libvirt system daemon that a test may kill -9 and start again.

The machine's own libvirtd (install.sh starts it) is never touched: this one
runs in a private mount namespace with its own /etc, /var/lib, /var/log,
/var/cache and /run/libvirt dirs bound in from ROOT. Its state (domain status
XML, monitor sockets) therefore outlives it, and a restarted daemon — in a new
namespace with the same binds — finds its running QEMUs again, as after a crash
of the real service. Clients reach it at `qemu:///system?socket=ROOT/run/libvirt-sock`.

QEMU runs as root (the test trees are root's), so the capability cache is not
judged stale at every look-up even if /dev/kvm is root-only (see ENVIRONMENT.md).

    python -m tests.faults.libvirtd ROOT    (inside `unshare -m`): binds, then exec libvirtd
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.util import wait_for

DIRS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
    "run": "/run/libvirt",
}
LIBVIRTD_CONF = 'listen_tls = 0\nlisten_tcp = 0\nauth_unix_rw = "none"\n'
QEMU_CONF = (
    'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\n'
    'stdio_handler = "file"\n'  # no virtlogd of its own
)


class PrivateLibvirtd:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        for name in DIRS:
            (root / name).mkdir(parents=True, exist_ok=True)
        (root / "log" / "qemu").mkdir(exist_ok=True)
        (root / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (root / "etc" / "qemu.conf").write_text(QEMU_CONF)

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self, timeout: float = 60) -> None:
        assert self.pid is None, "already running"
        if self.socket.exists():
            self.socket.unlink()  # a killed daemon's; its successor binds anew
        log = open(self.root / "libvirtd.log", "ab")  # noqa: SIM115
        # unshare execs (no fork): the child's pid is libvirtd's.
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private",
             sys.executable, "-m", "tests.faults.libvirtd", str(self.root)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[2]),
        )  # fmt: skip
        log.close()

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited: {self.log_tail()}")
            out = subprocess.run(["virsh", "-c", self.uri, "uri"], capture_output=True,
                                 timeout=30, check=False)  # fmt: skip
            return out.returncode == 0

        wait_for(ready, timeout, 0.1, what="the private libvirtd")

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def virsh(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.root / "libvirtd.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _main(root: str) -> None:
    for name, where in DIRS.items():
        os.makedirs(where, exist_ok=True)
        subprocess.run(["mount", "--bind", os.path.join(root, name), where], check=True,
                       timeout=30)  # fmt: skip
    pidfile = os.path.join(root, "libvirtd.pid")
    if os.path.exists(pidfile):
        os.unlink(pidfile)  # a killed daemon's: libvirtd would refuse to start
    os.execvp("libvirtd", ["libvirtd", "-p", pidfile])


if __name__ == "__main__":
    _main(sys.argv[1])
