"""WebSockets on corrald's own HTTP port (the consoles' vncwebsocket).

Why this way: Proxmox clients (its xterm.js and noVNC pages, scripts) open
`wss://node:8006/api2/json/nodes/N/lxc/ID/vncwebsocket` behind the same ticket
cookie as every API call, so a separate listener on another port would not
do. cheroot has no upgrade support; corral.cluster.http_takeover lets the
request's handler own its connection once the API has authenticated and
authorised it, and this module speaks RFC 6455 on it with `wsproto`: the
sans-IO WebSocket implementation of the python-hyper project (the authors of
h11), which does the handshake checks, framing, masking, fragmentation,
ping/pong and close handshake while we own the I/O. Nothing else on the
server changes, and a console costs one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from corral.cluster.errors import ParamError
from corral.cluster.http_takeover import TAKEOVER, Taken

# Headers of the client's request the handshake needs (h11 wants Host).
_HANDSHAKE = ("HOST", "UPGRADE", "CONNECTION", "SEC_WEBSOCKET_KEY", "SEC_WEBSOCKET_VERSION",
              "SEC_WEBSOCKET_PROTOCOL", "SEC_WEBSOCKET_EXTENSIONS", "ORIGIN")  # fmt: skip


def is_upgrade(environ: dict[str, Any]) -> bool:
    return (
        environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        and "upgrade" in environ.get("HTTP_CONNECTION", "").lower()
    )


def handshake_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key in _HANDSHAKE:
        value = environ.get(f"HTTP_{key}")
        if value is not None:
            out.append((key.replace("_", "-").title(), value))
    return out


def take_over(environ: dict[str, Any]) -> Taken:
    """Own the request's connection (the caller must `release()` it when done)."""
    takeover = environ.get(TAKEOVER)
    if takeover is None:
        # The root-only unix socket and test servers have no upgrade support.
        raise ParamError(message="WebSocket upgrade is not available on this listener")
    return takeover()  # type: ignore[no-any-return]


class WebSocket:
    """The server end of one WebSocket: `accept()`, then `messages()` and `send()`.

    send() may be called from another thread than the one reading messages."""

    def __init__(self, conn: Taken) -> None:
        self.conn = conn
        self.ws = WSConnection(ConnectionType.SERVER)
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.subprotocol: str | None = None

    def accept(self, environ: dict[str, Any], prefer: tuple[str, ...] = ("binary",)) -> None:
        headers = [(k.encode(), v.encode("latin-1")) for k, v in handshake_headers(environ)]
        path = environ.get("REQUEST_URI") or environ.get("PATH_INFO") or "/"
        try:
            self.ws.initiate_upgrade_connection(headers, path)
            request = next(e for e in self.ws.events() if isinstance(e, Request))
        except (RemoteProtocolError, LocalProtocolError, StopIteration) as err:
            raise ParamError(message=f"bad WebSocket handshake: {err}") from None
        offered = list(request.subprotocols)
        self.subprotocol = next((p for p in prefer if p in offered), None)
        if self.subprotocol is None and offered:
            self.subprotocol = offered[0]
        self._write(AcceptConnection(subprotocol=self.subprotocol))

    def _write(self, event: Any) -> None:
        with self.lock:
            if self.closed.is_set() and not isinstance(event, CloseConnection):
                return
            try:
                data = self.ws.send(event)
            except LocalProtocolError:
                return  # already closing
            try:
                self.conn.sendall(data)
            except OSError:
                self.closed.set()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            self._write(TextMessage(data=data))
        else:
            self._write(BytesMessage(data=data))

    def messages(self) -> Iterator[bytes]:
        """Each complete message the peer sends (text as UTF-8), until it closes."""
        parts: list[bytes] = []
        while not self.closed.is_set():
            data = self.conn.read()
            if not data:
                break
            self.ws.receive_data(data)
            try:
                events = list(self.ws.events())
            except RemoteProtocolError:
                break
            for event in events:
                if isinstance(event, Message):
                    chunk = event.data
                    parts.append(chunk.encode() if isinstance(chunk, str) else bytes(chunk))
                    if event.message_finished:
                        yield b"".join(parts)
                        parts = []
                elif isinstance(event, Ping):
                    self._write(event.response())
                elif isinstance(event, CloseConnection):
                    self._write(event.response())
                    self.closed.set()
                    return
        self.closed.set()

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed.is_set():
            return
        self._write(CloseConnection(code=code, reason=reason))
        self.closed.set()
