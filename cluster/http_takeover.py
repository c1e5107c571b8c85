"""Letting a WSGI handler take its HTTP connection over (for WebSocket upgrades).

corrald serves HTTP with cheroot, whose WSGI gateway has no upgrade support.
This gateway adds one callable to the WSGI environ, `corral.takeover`: once
the application has authenticated and authorised a request, it calls it to
own the connection (the TLS socket and cheroot's read buffer, which may
already hold bytes the client sent after its request). cheroot then writes
nothing more on that connection and closes it when the handler returns.

The handler keeps the worker thread for as long as it uses the connection (a
console session lasts minutes), so the pool grows by one thread for each
connection taken over and shrinks back afterwards: ordinary API calls never
wait behind open consoles. MAX_TAKEN bounds how many are open at once.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

from cheroot import wsgi

from corral.cluster.errors import Unavailable

TAKEOVER = "corral.takeover"
MAX_TAKEN = 256  # consoles and the web console's state feeds

_taken = 0
_taken_lock = threading.Lock()


@dataclass
class Taken:
    """A connection the handler owns: read through `rfile` (buffered), write to `sock`."""

    sock: socket.socket
    rfile: Any
    release: Any  # call when done (the pool shrinks back)

    def read(self, size: int = 65536) -> bytes:
        """What the peer sent next (b"" at its end); buffered bytes first."""
        try:
            return bytes(self.rfile.read1(size))
        except (OSError, ValueError):
            return b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)


class _Held:
    """Stands in for a connection's writer while cheroot writes a response's head."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


class TakeoverGateway(wsgi.Gateway_10):
    """cheroot's WSGI 1.0 gateway plus `environ["corral.takeover"]`, and a response's
    status line and headers sent with its first chunk of body."""

    taken = False

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Any:
        if self.taken:
            return self.write  # nothing more is sent on a connection taken over
        return super().start_response(status, headers, exc_info)

    def write(self, chunk: bytes) -> None:
        if self.taken:
            return
        req = self.req
        if req.sent_headers:
            super().write(chunk)
            return
        # cheroot sends the head and the first chunk apart: two TLS records, two sends,
        # and on a busy node each send waits to get the GIL back (~0.5 ms measured in
        # corrald). An API answer is one chunk: it now leaves in one send.
        wfile = req.conn.wfile
        held = _Held()
        req.conn.wfile = held
        try:
            super().write(chunk)
        finally:
            req.conn.wfile = wfile
            if held.parts:
                wfile.write(b"".join(held.parts))

    def get_environ(self) -> dict[str, Any]:  # type: ignore[override]
        env = super().get_environ()
        env[TAKEOVER] = self._takeover
        return env

    def _takeover(self) -> Taken:
        global _taken
        with _taken_lock:
            if _taken >= MAX_TAKEN:
                raise Unavailable(f"too many open consoles on this node (at most {MAX_TAKEN})")
            _taken += 1
        self.taken = True
        req = self.req
        # cheroot must neither write a response nor keep the connection alive.
        req.sent_headers = True
        req.chunked_write = False
        req.close_connection = True
        conn = req.conn
        sock = conn.socket
        # The server's idle timeout (30 s) would cut a quiet console: keepalive
        # probes find dead peers instead.
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        pool = req.server.requests
        pool.grow(1)
        released = threading.Event()

        def release() -> None:
            global _taken
            if released.is_set():
                return
            released.set()
            with _taken_lock:
                _taken -= 1
            pool.shrink(1)

        return Taken(sock, conn.rfile, release)
