"""Talk to the tiny guest over its serial socket; read what it printed from the log.

The guest runs a shell on ttyS0 (tests/assets/guest.py): `run()` types a
command followed by an `echo` of a marker whose text only exists once the
shell *executed* it (`$((1+1))` is echoed back literally by the tty), and
returns what the command printed.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time

from tests.util import wait_for

_tokens = itertools.count(1)


class Serial:
    def __init__(self, sock_path: str, log_path: str) -> None:
        self.sock_path = sock_path
        self.log_path = log_path
        self.sock: socket.socket | None = None

    def text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def count(self, marker: str) -> int:
        return self.text().count(marker)

    def wait_count(self, marker: str, n: int, timeout: float = 180) -> None:
        wait_for(lambda: self.count(marker) >= n, timeout, 0.1, f"{n}x {marker!r} on the console")

    def connect(self) -> None:
        self.close()
        wait_for(lambda: os.path.exists(self.sock_path), 30, 0.05, "the serial socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(self.sock_path)
        self.sock = sock
        # A connected client must read: QEMU writes the UART byte by byte and
        # an unread socket fills after a few hundred of them, stalling the
        # guest's console. What it says is read from the log file instead.
        threading.Thread(target=self._drain, args=(sock,), daemon=True).start()

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def send(self, line: str) -> None:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(line.encode() + b"\n")

    def run(self, command: str, timeout: float = 30) -> str:
        token = f"@crl{next(_tokens)}x"
        offset = len(self.text())
        self.send(f"{command}; echo {token}$((1+1))")
        typed, done = f"{token}$((1+1))", f"{token}2"
        try:
            wait_for(lambda: done in self.text()[offset:], timeout, 0.05, f"output of {command!r}")
        except AssertionError as err:
            raise AssertionError(f"{err}; console ends with {self.text()[-400:]!r}") from None
        segment = self.text()[offset:]
        segment = segment[: segment.index(done)]
        return segment.split(typed, 1)[-1].strip()  # after the tty's echo of the line

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the drain thread
            except OSError:
                pass
            self.sock.close()
            self.sock = None


def wait_ready(serial: Serial, marker: str, n: int = 1, timeout: float = 180) -> float:
    started = time.monotonic()
    serial.wait_count(marker, n, timeout)
    return time.monotonic() - started
