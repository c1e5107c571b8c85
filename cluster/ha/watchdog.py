"""The fencing watchdog: a process of its own that kills HA guests when not fed.

corrald starts it (`python -m corral.cluster.ha.watchdog`) and talks to it
over its stdin, one JSON object a line:

    {"deadline": M, "pids": {"ct:101": 4242}}   feed: arm until monotonic time M
    {"add": {"vm:102": 4343}}                    a guest just started: watch it too
    {"disarm": true}                             clean shutdown of the LRM

It does not depend on corrald's loops, threads or even its survival: if the
daemon hangs, dies or its feeds stop (it could not renew its agent lock), the
deadline passes and every registered guest gets SIGKILL through a pidfd
(opened at registration, so a recycled PID is never hit). CLOCK_MONOTONIC is
system-wide on Linux, so the daemon's deadline means the same here. After
stdin closes it still honours the last deadline, then exits.

Where a kernel watchdog exists (/dev/watchdog, softdog) and --softdog is
given, it is petted while armed, so a hung watchdog process reboots the host
as Proxmox's watchdog-mux does. This machine has none (ENVIRONMENT.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any


class Watchdog:
    """The state machine of the watchdog process (testable without a process)."""

    def __init__(self, out: IO[str] = sys.stderr) -> None:
        self.deadline: float | None = None
        self.fds: dict[str, tuple[int, int]] = {}  # sid -> (pid, pidfd)
        self.out = out
        self.fired = 0

    def say(self, msg: str) -> None:
        stamp = (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            + f".{int(time.time() * 1000) % 1000:03d}Z"
        )
        print(f"ts={stamp} watchdog[{os.getpid()}]: {msg}", file=self.out, flush=True)

    def _watch(self, sid: str, pid: int) -> None:
        old = self.fds.get(sid)
        if old is not None and old[0] == pid:
            return
        if old is not None:
            os.close(old[1])
            del self.fds[sid]
        try:
            self.fds[sid] = (pid, os.pidfd_open(pid))
        except OSError:
            pass  # already gone: nothing to kill

    def handle(self, msg: dict[str, Any]) -> None:
        if msg.get("disarm"):
            self.deadline = None
            for sid in list(self.fds):
                os.close(self.fds.pop(sid)[1])
            return
        for sid, pid in (msg.get("add") or {}).items():
            self._watch(sid, int(pid))
        if "deadline" in msg:
            pids = {s: int(p) for s, p in (msg.get("pids") or {}).items()}
            for sid in [s for s in self.fds if s not in pids]:
                os.close(self.fds.pop(sid)[1])
            for sid, pid in pids.items():
                self._watch(sid, pid)
            self.deadline = float(msg["deadline"])

    def expire(self, now: float) -> list[str]:
        """Kill every watched guest if the deadline has passed; the sids killed."""
        if self.deadline is None or now < self.deadline:
            return []
        killed = []
        for sid, (_pid, fd) in sorted(self.fds.items()):
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed.append(sid)
            except ProcessLookupError:
                pass
            os.close(fd)
        self.fds.clear()
        late = now - self.deadline
        self.deadline = None
        self.fired += 1
        self.say(f"not fed in time ({late:.3f} s late): killed {killed or 'nothing'}")
        return killed


def run(stream: IO[str], softdog: str | None = None) -> None:
    wd = Watchdog()
    dev = None
    if softdog and os.path.exists(softdog):
        dev = os.open(softdog, os.O_WRONLY)
    fd = stream.fileno()
    buf = b""
    open_ = True
    while open_ or wd.deadline is not None:
        wait = 1.0 if wd.deadline is None else max(0.0, wd.deadline - time.monotonic())
        ready: list[Any] = []
        if open_:
            ready, _, _ = select.select([fd], [], [], min(wait, 1.0))
        else:
            time.sleep(min(wait, 1.0))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                open_ = False
                wd.say("daemon gone; honouring the last deadline")
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    wd.handle(json.loads(line))
        wd.expire(time.monotonic())
        if dev is not None and wd.deadline is not None:
            os.write(dev, b"\0")
    if dev is not None:
        os.write(dev, b"V")  # magic close: disarm the kernel watchdog on a clean exit
        os.close(dev)


class WatchdogClient:
    """corrald's end: starts the process and feeds it; restarts it if it died."""

    def __init__(self, softdog: str | None = None) -> None:
        self.softdog = softdog
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def _send(self, msg: dict[str, Any]) -> None:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                argv = [sys.executable, "-m", "corral.cluster.ha.watchdog"]
                if self.softdog:
                    argv += ["--softdog", self.softdog]
                self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                self.proc = None

    def feed(self, deadline: float, pids: dict[str, int]) -> None:
        self._send({"deadline": deadline, "pids": pids})

    def add(self, sid: str, pid: int) -> None:
        self._send({"add": {sid: pid}})

    def disarm(self) -> None:
        if self.proc is not None:
            self._send({"disarm": True})

    def close(self) -> None:
        """Disarm and let the process exit (clean shutdown only)."""
        with self.lock:
            proc, self.proc = self.proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.write(b'{"disarm": true}\n')
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    softdog = args[args.index("--softdog") + 1] if "--softdog" in args else None
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only a missed deadline or EOF ends it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run(sys.stdin, softdog)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
