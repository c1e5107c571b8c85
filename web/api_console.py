"""Guest consoles: `termproxy` (CT terminal), `vncproxy` sessions, `vncwebsocket`.

As in Proxmox, opening a console is two calls. `POST .../termproxy` (or the
VM's `.../vncproxy` with websocket=1) on the guest's own node returns a
`port` and a one-time `ticket`; then `GET .../vncwebsocket?port=..&vncticket=..`
with the session's cookie upgrades to a WebSocket that carries the console:

- a CT terminal speaks Proxmox's termproxy protocol: the client's first
  message is `USER:TICKET\\n`, answered `OK`; then `0:LENGTH:DATA` is input,
  `1:COLS:ROWS:` a resize and `2` a keep-alive; the shell's output comes back
  as binary messages. The shell runs on a pty of the owning node
  (`lxc-attach`, see the driver's `terminal()`), with it as controlling tty
  so a resize reaches the CT's programs.
- a VM console carries the guest's VNC (RFB) stream both ways, for noVNC.

Sessions live in the owning node's memory (a console is a local resource);
a vncwebsocket reaching another node is relayed there byte for byte, TLS
verified with the cluster CA, the caller's own credentials passed along.
"""

from __future__ import annotations

import fcntl
import os
import pty
import secrets
import select
import signal
import socket
import ssl
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from flask import Flask, Response

from corral.cluster import guests
from corral.cluster.errors import (
    Conflict,
    CorralError,
    Forbidden,
    ParamError,
    Unavailable,
)
from corral.cluster.schema import NODE, VMID, Param
from corral.cluster.session_tasks import SessionTask
from corral.cluster.tasks import ABORTED
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node
from corral.web.app import dispatch, on_app
from corral.web.proxy import PROXIED, node_address
from corral.web.websocket import WebSocket, handshake_headers, is_upgrade, take_over

SESSION_TTL = 30.0  # seconds between the proxy call and the WebSocket (Proxmox: 10)
PORTS = range(5900, 6000)  # the range Proxmox hands out; here a session's name
CONNECT_TIMEOUT = 10.0
KIND = {"lxc": "CT", "qemu": "VM", "node": "node"}


@dataclass
class Session:
    type: str
    vmid: int
    port: int
    ticket: str
    user: str
    expires: float
    target: tuple[str, int] | None = None  # a VM's VNC server
    serial: str | None = None  # a VM's serial socket (termproxy on serialN)
    task: SessionTask | None = None  # its `vncproxy`/`termproxy` task, running while open


class Sessions:
    """Console sessions opened on this node and not yet connected."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[tuple[str, int, int], Session] = {}

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self.open.items() if s.expires < now]:
            session = self.open.pop(key)
            if session.task is not None:
                # The task's end is written outside the lock (an etcd call).
                threading.Thread(
                    target=session.task.end,
                    args=(f"no connection within {SESSION_TTL:.0f} s", "ticket expired"),
                    daemon=True,
                ).start()

    def expire(self) -> None:
        with self.lock:
            self._expire()

    def add(self, session: Session) -> Session:
        with self.lock:
            self._expire()
            self.open[(session.type, session.vmid, session.port)] = session
        # An unused ticket ends its task even if no other console is opened meanwhile.
        timer = threading.Timer(SESSION_TTL + 0.5, self.expire)
        timer.daemon = True
        timer.start()
        return session

    def free_port(self, type: str, vmid: int) -> int:
        with self.lock:
            self._expire()
            used = {port for (t, v, port) in self.open if (t, v) == (type, vmid)}
        for port in PORTS:
            if port not in used:
                return port
        raise Unavailable(f"too many pending consoles for {KIND[type]} {vmid}")

    def issue(self, ctx: Ctx, type: str, vmid: int, *, serial: str | None = None) -> dict:
        """A termproxy answer: a free port and a one-time ticket for the caller's
        WebSocket, and the UPID of the `termproxy` task the session runs as."""
        port = self.free_port(type, vmid)
        ticket = secrets.token_urlsafe(24)
        expires = time.monotonic() + SESSION_TTL
        task = session_task(ctx, "termproxy", vmid if type != "node" else None)
        what = f"{KIND[type]} {vmid}" if type != "node" else f"node {ctx.node}"
        upid = task.begin(f"terminal of {what}{f' ({serial})' if serial else ''}, port {port}")
        self.add(Session(type, vmid, port, ticket, ctx.user, expires, serial=serial, task=task))
        return {"port": port, "ticket": ticket, "upid": upid, "user": ctx.user}

    def take(self, type: str, vmid: int, port: int, ticket: str, user: str) -> Session:
        """The session for this WebSocket, used up (a ticket opens one connection)."""
        with self.lock:
            self._expire()
            session = self.open.get((type, vmid, port))
            if session is None or not secrets.compare_digest(session.ticket, ticket):
                raise Forbidden("invalid or expired console ticket")
            if session.user != user:
                raise Forbidden("the console ticket belongs to another user")
            del self.open[(type, vmid, port)]
            return session


SESSIONS = Sessions()


def session_task(ctx: Ctx, type: str, vmid: int | None) -> SessionTask:
    return SessionTask(ctx.tasks, node=ctx.node, type=type, id=str(vmid or ""), user=ctx.user)


def register_vnc(ctx: Ctx, type: str, vmid: int, info: dict[str, Any]) -> str:
    """Remember a VM's vncproxy answer so its vncwebsocket may connect (called by
    vncproxy); returns the UPID of the `vncproxy` task that runs while it is open."""
    task = session_task(ctx, "vncproxy", vmid)
    upid = task.begin(f"VNC console of {KIND[type]} {vmid}, port {info['port']}")
    SESSIONS.add(
        Session(
            type,
            vmid,
            int(info["port"]),
            str(info["ticket"]),
            ctx.user,
            time.monotonic() + SESSION_TTL,
            (str(info.get("host") or "127.0.0.1"), int(info["port"])),
            task=task,
        )
    )
    return upid


def _driver(ctx: Ctx, type: str) -> Any:
    from corral.web.api_guests import driver_for

    return driver_for(ctx, type)


@endpoint(
    "POST",
    "/nodes/{node}/lxc/{vmid}/termproxy",
    params={"node": NODE, "vmid": VMID},
    perm=("/vms/{vmid}", ["VM.Console"]),
    description="Creates a TCP proxy connection (termproxy) to the container's shell.",
    local=True,
    returns={
        "type": "object",
        "properties": {
            "port": {"type": "integer"},
            "ticket": {"type": "string"},
            "upid": {"type": "string"},
            "user": {"type": "string"},
        },
    },
)
def termproxy(ctx: Ctx, node: str, vmid: int) -> dict[str, Any]:
    require_node(ctx, node)
    rec = guests.get_record(ctx.store, vmid, type="lxc", node=node)
    _driver(ctx, "lxc").terminal(vmid, rec["config"])  # refuses a stopped CT now, not later
    return SESSIONS.issue(ctx, "lxc", vmid)


@endpoint(
    "POST",
    "/nodes/{node}/qemu/{vmid}/termproxy",
    params={
        "node": NODE,
        "vmid": VMID,
        "serial": Param("string", "Opens a serial terminal (defaults to display).",
                        optional=True, enum=("serial0", "serial1", "serial2", "serial3")),
    },
    perm=("/vms/{vmid}", ["VM.Console"]),
    description="Creates a terminal proxy to a VM's serial port (`serialN: socket`).",
    local=True,
)  # fmt: skip
def qemu_termproxy(ctx: Ctx, node: str, vmid: int, serial: str | None = None) -> dict[str, Any]:
    require_node(ctx, node)
    rec = guests.get_record(ctx.store, vmid, type="qemu", node=node)
    key = serial or "serial0"  # corral's VMs have no text display to fall back to
    if rec["config"].get(key) != "socket":
        raise ParamError.one("serial", f"VM {vmid} has no '{key}: socket'")
    driver = _driver(ctx, "qemu")
    if vmid not in driver.running():
        raise Conflict(f"VM {vmid} not running")
    paths = getattr(driver, "serial_paths", None)
    if paths is None:
        raise Unavailable("this node's VM driver has no serial consoles")
    sock_path, _log = paths(vmid, int(key[-1]))
    return SESSIONS.issue(ctx, "qemu", vmid, serial=sock_path)


def _register_websocket(type: str) -> None:
    @endpoint(
        "GET",
        f"/nodes/{{node}}/{type}/{{vmid}}/vncwebsocket",
        params={
            "node": NODE,
            "vmid": VMID,
            "port": Param(
                "integer",
                "Port number returned by previous vncproxy call.",
                minimum=5900,
                maximum=65535,
            ),
            "vncticket": Param("string", "Ticket from previous call to vncproxy.", max_length=512),
        },
        perm=("/vms/{vmid}", ["VM.Console"]),
        description="Opens a websocket for VNC traffic (or the termproxy protocol).",
        returns={"type": "object", "properties": {"port": {"type": "string"}}},
    )
    def vncwebsocket(ctx: Ctx, node: str, vmid: int, port: int, vncticket: str) -> Any:
        return _serve(ctx, node, type, vmid, port, vncticket)

    vncwebsocket.__name__ = f"{type}_vncwebsocket"


for _type in ("lxc", "qemu"):
    _register_websocket(_type)


def _serve(ctx: Ctx, node: str, type: str, vmid: int, port: int, vncticket: str) -> Any:
    """One console's WebSocket, here or relayed to `node`."""
    environ = ctx.request.environ
    if not is_upgrade(environ):
        raise ParamError(message="vncwebsocket needs a WebSocket upgrade request")
    require_node(ctx, node)
    if node != ctx.node and not ctx.request.headers.get(PROXIED):
        return _relay_to(ctx, node)
    if type != "node":
        guests.get_record(ctx.store, vmid, type=type, node=node)
    session = SESSIONS.take(type, vmid, port, vncticket, ctx.user)
    try:
        answer = _open(ctx, node, type, vmid, session)
    except CorralError as err:
        if session.task is not None:
            session.task.end(err.message)
        raise
    if session.task is not None:
        if session.task.aborted:
            session.task.end(ABORTED, "console stopped through its task")
        else:
            session.task.end("OK", "console closed")
    return answer


def _open(ctx: Ctx, node: str, type: str, vmid: int, session: Session) -> Any:
    """Serve one taken session until its WebSocket closes."""
    environ = ctx.request.environ
    argv = None
    if type == "lxc":
        rec = guests.get_record(ctx.store, vmid, type=type, node=node)
        argv = _driver(ctx, type).terminal(vmid, rec["config"])
    elif type == "node":
        argv = _host_login(ctx.user)
    backend = None
    if session.target is not None:
        try:
            backend = socket.create_connection(session.target, timeout=CONNECT_TIMEOUT)
        except OSError as err:
            raise Unavailable(f"VNC server of VM {vmid} does not answer: {err}") from None
    elif session.serial is not None:
        backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        backend.settimeout(CONNECT_TIMEOUT)
        try:
            backend.connect(session.serial)
        except OSError as err:
            backend.close()
            raise Unavailable(f"serial port of VM {vmid} does not answer: {err}") from None
    conn = take_over(environ)
    try:
        ws = WebSocket(conn)
        try:
            ws.accept(environ)
        except CorralError:
            return Response(b"", status=400)
        _stoppable(ctx, session, ws, conn)
        if argv is not None:
            _terminal(ws, session, argv)
        elif backend is not None and session.serial is not None:
            _serial(ws, session, backend)
        elif backend is not None:
            _vnc(ws, backend)
    finally:
        if session.task is not None:
            _LIVE.pop(session.task.upid, None)
        if backend is not None:
            backend.close()
        conn.release()
    return Response(b"", status=101)


# -- stopping a console's task closes the console (as Proxmox's task "Stop") ----------

_LIVE: dict[str, Callable[[], None]] = {}  # the UPID of an open console -> how to close it
_WATCHES: dict[str, Any] = {}  # node -> its watch on tasks/{node}/ (one per node process)
_WATCH_LOCK = threading.Lock()


def _stoppable(ctx: Ctx, session: Session, ws: WebSocket, conn: Any) -> None:
    task = session.task
    if task is None:
        return

    def stop() -> None:
        task.aborted = True
        ws.close(1000, "console stopped")
        try:
            conn.sock.shutdown(socket.SHUT_RD)  # wakes the loop reading the browser
        except OSError:
            pass

    _LIVE[task.upid] = stop
    with _WATCH_LOCK:
        if ctx.node not in _WATCHES:
            # DELETE /nodes/N/tasks/UPID marks the record aborted (from any node).
            _WATCHES[ctx.node] = ctx.store.watch(f"tasks/{ctx.node}/", _on_task_change)


def _on_task_change(event: Any) -> None:
    if event.kind == "put":
        records = [event.value]
    elif event.kind == "resync":
        records = [kv.value for kv in event.value]
    else:
        return
    for rec in records:
        if isinstance(rec, dict) and rec.get("abort") and rec.get("status") == "running":
            stop = _LIVE.get(str(rec.get("upid")))
            if stop is not None:
                stop()


# -- the node's own shell (Proxmox's node "Shell") --------------------------------------


def _host_login(user: str) -> list[str]:
    # As Proxmox: root@pam gets root's login shell; anyone else the host's own login
    # prompt (their corral login is no host account).
    return ["login", "-f", "root"] if user == "root@pam" else ["login"]


@endpoint(
    "POST",
    "/nodes/{node}/termproxy",
    params={"node": NODE},
    perm=("/nodes/{node}", ["Sys.Console"]),
    description="Creates a terminal proxy to the node's shell (root@pam) or login prompt.",
    local=True,
)
def node_termproxy(ctx: Ctx, node: str) -> dict[str, Any]:
    require_node(ctx, node)
    return SESSIONS.issue(ctx, "node", 0)


@endpoint(
    "GET",
    "/nodes/{node}/vncwebsocket",
    params={
        "node": NODE,
        "port": Param("integer", "Port number returned by termproxy.", minimum=5900,
                      maximum=65535),
        "vncticket": Param("string", "Ticket from the termproxy call.", max_length=512),
    },
    perm=("/nodes/{node}", ["Sys.Console"]),
    description="Opens a websocket for the node's terminal (termproxy protocol).",
)  # fmt: skip
def node_vncwebsocket(ctx: Ctx, node: str, port: int, vncticket: str) -> Any:
    return _serve(ctx, node, "node", 0, port, vncticket)


@on_app
def _websocket_route(app: Flask, node: Any) -> None:
    # Werkzeug routes WebSocket upgrades only to rules marked websocket=True (others
    # answer 400): this rule hands them to the API's ordinary dispatch.
    @app.route(
        "/api2/json/nodes/<name>/<any(lxc, qemu):type>/<vmid>/vncwebsocket",
        methods=["GET"],
        websocket=True,
    )
    def vncwebsocket_upgrade(name: str, type: str, vmid: str) -> Response:
        return dispatch(node, f"nodes/{name}/{type}/{vmid}/vncwebsocket")

    @app.route("/api2/json/nodes/<name>/vncwebsocket", methods=["GET"], websocket=True)
    def node_vncwebsocket_upgrade(name: str) -> Response:
        return dispatch(node, f"nodes/{name}/vncwebsocket")


# -- the CT terminal (termproxy protocol) ---------------------------------------------


class TermInput:
    """Parses the client's termproxy stream (messages may split or merge)."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        """("data", bytes) | ("resize", (cols, rows)) | ("ping", None) for each whole message."""
        self.buf += data
        out: list[tuple[str, Any]] = []
        while self.buf:
            kind = self.buf[:1]
            if kind == b"2":
                out.append(("ping", None))
                self.buf = self.buf[1:]
            elif kind == b"0":
                head = self.buf.split(b":", 2)
                if len(head) < 3:
                    break
                if not head[1].isdigit():
                    raise ValueError("bad input length")
                size = int(head[1])
                start = len(head[0]) + len(head[1]) + 2
                if len(self.buf) < start + size:
                    break
                out.append(("data", self.buf[start : start + size]))
                self.buf = self.buf[start + size :]
            elif kind == b"1":
                parts = self.buf.split(b":", 3)
                if len(parts) < 4:
                    break
                if not (parts[1].isdigit() and parts[2].isdigit()):
                    raise ValueError("bad resize message")
                out.append(("resize", (int(parts[1]), int(parts[2]))))
                self.buf = parts[3]
            else:
                raise ValueError(f"unknown termproxy message type {kind!r}")
        return out


def _authenticate(ws: WebSocket, session: Session) -> bytes | None:
    """Read `USER:TICKET\\n`; answer OK. Returns what followed it, None if refused."""
    got = b""
    for message in ws.messages():
        got += message
        if b"\n" in got or len(got) > 4096:
            break
    line, _, rest = got.partition(b"\n")
    user, _, ticket = line.decode(errors="replace").rpartition(":")
    if user != session.user or not secrets.compare_digest(ticket, session.ticket):
        ws.close(1008, "authentication failed")
        if session.task is not None:
            session.task.end("authentication failed")
        return None
    ws.send(b"OK")
    return rest


def _terminal(ws: WebSocket, session: Session, argv: list[str]) -> None:
    rest = _authenticate(ws, session)
    if rest is None:
        return
    master, slave = pty.openpty()
    _resize(master, 80, 24)
    try:
        # `setsid -c` makes the pty the shell's controlling tty (a resize then
        # signals the CT's foreground programs); no preexec_fn in a threaded daemon.
        proc = subprocess.Popen(
            ["setsid", "-c", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            close_fds=True,
        )
    except OSError as err:
        os.close(master)
        os.close(slave)
        ws.send(f"\r\nconsole failed: {err}\r\n".encode())
        ws.close(1011)
        return
    os.close(slave)
    reader = threading.Thread(target=_pump_output, args=(master, ws), daemon=True)
    reader.start()
    try:
        for kind, value in _term_actions(ws, rest):
            if kind == "data":
                _write_all(master, value)
            elif kind == "resize":
                _resize(master, *value)
    finally:
        ws.close()
        _end(proc)
        reader.join(5)
        try:
            os.close(master)
        except OSError:
            pass


def _term_actions(ws: WebSocket, first: bytes | None) -> Iterator[tuple[str, Any]]:
    """The termproxy protocol's actions ("data", "resize") from the browser: `first` is
    what came with the ticket. A malformed message closes the socket (1003) and ends them."""
    parser = TermInput()
    for message in _chain([first] if first else [], ws):
        try:
            actions = parser.feed(message)
        except ValueError as err:
            ws.close(1003, str(err))
            return
        yield from actions


def _chain(first: list[bytes], ws: WebSocket) -> Any:
    yield from first
    yield from ws.messages()


def _pump_output(master: int, ws: WebSocket) -> None:
    poller = select.poll()
    poller.register(master, select.POLLIN)
    while not ws.closed.is_set():
        if not poller.poll(500):
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the shell exited
            data = b""
        if not data:
            break
        ws.send(data)
    ws.close()


def _write_all(fd: int, data: bytes) -> None:
    while data:
        done = os.write(fd, data)
        data = data[done:]


def _resize(fd: int, cols: int, rows: int) -> None:
    cols, rows = max(1, min(cols, 1000)), max(1, min(rows, 1000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGHUP)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- a guest's socket relayed to the browser (serial and VNC) ----------------------------


def _pump_backend(backend: socket.socket, ws: WebSocket) -> threading.Thread:
    """Copy what the guest's socket says to the browser, in a thread, until either ends."""
    backend.settimeout(None)

    def pump() -> None:
        while not ws.closed.is_set():
            try:
                data = backend.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            ws.send(data)
        ws.close()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    return reader


def _close_backend(ws: WebSocket, backend: socket.socket, reader: threading.Thread) -> None:
    ws.close()
    try:
        backend.shutdown(socket.SHUT_RDWR)  # wakes the pump's recv()
    except OSError:
        pass
    reader.join(5)


# -- a VM's serial port (termproxy protocol over the serial socket) --------------------


def _serial(ws: WebSocket, session: Session, backend: socket.socket) -> None:
    rest = _authenticate(ws, session)
    if rest is None:
        return
    reader = _pump_backend(backend, ws)
    try:
        for kind, value in _term_actions(ws, rest):
            if kind == "data":
                backend.sendall(value)  # a serial line has no size to resize
    except OSError:
        pass
    finally:
        _close_backend(ws, backend, reader)


# -- the VM's VNC stream ------------------------------------------------------------


def _vnc(ws: WebSocket, backend: socket.socket) -> None:
    reader = _pump_backend(backend, ws)
    try:
        for message in ws.messages():
            backend.sendall(message)
    except OSError:
        pass
    finally:
        _close_backend(ws, backend, reader)


# -- from another node: relay the upgrade to the owner -----------------------------------


def _relay_to(ctx: Ctx, target: str) -> Any:
    host, port = node_address(ctx.store, target)
    req = ctx.request
    headers = handshake_headers(req.environ)
    headers = [(k, v) for k, v in headers if k != "Host"]
    headers.append(("Host", f"{host}:{port}"))
    headers.append((PROXIED, ctx.node))
    if "Authorization" in req.headers:
        headers.append(("Authorization", req.headers["Authorization"]))
    if "PVEAuthCookie" in req.cookies:
        # Browsers send the ticket %-encoded, scripts raw: encode it exactly once.
        ticket = unquote(req.cookies["PVEAuthCookie"])
        headers.append(("Cookie", f"PVEAuthCookie={quote(ticket)}"))
    path = req.full_path if req.query_string else req.path
    head = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    tls = ssl.create_default_context(cafile=f"{ctx.data_dir}/ssl/ca.pem")
    try:
        raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        upstream = tls.wrap_socket(raw, server_hostname=host)
        upstream.sendall(head.encode("latin-1"))
        answer = b""
        while b"\r\n\r\n" not in answer and len(answer) < 65536:
            chunk = upstream.recv(4096)
            if not chunk:
                break
            answer += chunk
    except OSError as err:
        raise Unavailable(f"node '{target}' did not answer: {err}") from None
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    if " 101 " not in status_line + " ":
        upstream.close()
        code = status_line.split(" ")[1] if status_line.count(" ") >= 1 else "502"
        reason = status_line.split(" ", 2)[2] if status_line.count(" ") >= 2 else "bad gateway"
        raise _status_error(int(code) if code.isdigit() else 502, reason)
    conn = take_over(req.environ)
    try:
        conn.sendall(answer)  # the 101 and whatever followed it
        upstream.settimeout(None)

        def down() -> None:
            while True:
                try:
                    data = upstream.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                try:
                    conn.sendall(data)
                except OSError:
                    break
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        reader = threading.Thread(target=down, daemon=True)
        reader.start()
        while True:
            data = conn.read()
            if not data:
                break
            try:
                upstream.sendall(data)
            except OSError:
                break
        try:
            upstream.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        reader.join(5)
    finally:
        upstream.close()
        conn.release()
    return Response(b"", status=101)


def _status_error(status: int, reason: str) -> CorralError:
    err = Conflict(reason) if status == 409 else CorralError(reason)
    err.status = status
    return err
