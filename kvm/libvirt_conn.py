"""The driver's libvirt connection, the process's event loop, errors at the edge.

- libvirt needs an event loop implementation registered before the first
  connection and a thread running it (for `qemu:///embed` it drives the
  QEMU monitors themselves): `ensure_event_loop()` does both, once per process.
- One connection per driver, opened lazily (the first open of an embed root
  probes QEMU for seconds) and re-opened if it died (libvirtd restarted).
- Every call runs on a small thread pool with a deadline, so a hung libvirt
  answers Unavailable instead of hanging the node's worker forever.
- libvirt errors become corral errors here and nowhere else.

`qemu:///embed?root=DIR` runs the QEMU driver inside this process: one root
per process (libvirt's rule), `DIR/etc/qemu.conf` written on first use.
QEMU processes outlive the process; a later open of the same root
reconnects to them, and must not exit before libvirt finished reconnecting
(it kills domains whose reconnect was cut short), hence `_settle()`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

import libvirt

from corral.cluster.errors import (
    CommandFailed,
    Conflict,
    CorralError,
    NotFound,
    NotSupported,
    Unavailable,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

OPEN_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0
# No virtlogd in an embed root: QEMU writes its log and chardev logs itself.
# It runs as root to open volumes and sockets the daemon (root) created.
EMBED_QEMU_CONF = 'stdio_handler = "file"\nuser = "root"\ngroup = "root"\n'

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        # Errors are raised as exceptions; libvirt must not also print them.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _loop_thread = threading.Thread(target=_run_loop, name="libvirt-events", daemon=True)
        _loop_thread.start()


def _run_loop() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # noqa: BLE001 - the loop must survive one bad callback
            log.exception("libvirt event loop iteration failed")
            time.sleep(0.1)


def embed_root(uri: str) -> str | None:
    parsed = urlparse(uri)
    if parsed.scheme != "qemu" or parsed.path != "/embed":
        return None
    roots = parse_qs(parsed.query).get("root") or []
    return roots[0] if roots else None


def prepare_embed_root(root: str) -> None:
    os.makedirs(os.path.join(root, "etc"), mode=0o700, exist_ok=True)
    conf = os.path.join(root, "etc", "qemu.conf")
    if not os.path.exists(conf):  # an admin's own qemu.conf is kept
        with open(conf + ".tmp", "w") as fh:
            fh.write(EMBED_QEMU_CONF)
        os.replace(conf + ".tmp", conf)


def translate(err: libvirt.libvirtError, what: str) -> CorralError:
    code = err.get_error_code()
    msg = f"{what}: {err.get_error_message() or err}"
    if code in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT):
        return NotFound(msg)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        return Conflict(msg)
    if code in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
        return NotSupported(msg)
    if code in (
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_OPERATION_TIMEOUT,
        libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_INVALID_CONN,
    ):
        return Unavailable(msg)
    return CommandFailed(cmd=what, stderr=err.get_error_message() or str(err))


def lost_message(what: str, err: libvirt.libvirtError) -> str:
    return (
        f"{what}: the connection to libvirt was lost (the libvirt daemon stopped or "
        f"restarted: {err.get_error_message() or err}); whether it took effect shows in "
        "the VM's status once libvirt is back"
    )


class Libvirt:
    """A lazily opened, self-healing connection with deadlines on every call."""

    def __init__(self, uri: str, *, call_timeout: float = CALL_TIMEOUT) -> None:
        self.uri = uri
        self.call_timeout = call_timeout
        self.root = embed_root(uri)
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        # name -> domain handle found by domain(), for the connection that found it.
        self._handles: dict[str, libvirt.virDomain] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=16, thread_name_prefix="libvirt"
        )

    def _open(self) -> libvirt.virConnect:
        ensure_event_loop()
        if self.root is not None:
            prepare_embed_root(self.root)
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            raise Unavailable(
                f"cannot open libvirt at {self.uri} (is the libvirt daemon running?): "
                f"{err.get_error_message()}"
            ) from err
        if self.root is not None:
            self._settle(conn)
        return conn

    @staticmethod
    def _settle(conn: libvirt.virConnect) -> None:
        """Wait until libvirt reconnected to running domains (a query job waits for it)."""
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            try:
                dom.memoryStats()
            except libvirt.libvirtError:
                pass

    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                log.warning("libvirt connection to %s lost; reopening", self.uri)
                self._conn = None
            self._handles = {}  # handles of the old connection die with it
            self._conn = self._open()
            return self._conn

    def run(self, what: str, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """fn(*args) on the pool, bounded by `timeout`, libvirt errors translated."""

        def call() -> T:
            try:
                return fn(*args)
            except libvirt.libvirtError as err:
                if self._lost():
                    raise Unavailable(lost_message(what, err)) from err
                raise translate(err, what) from err

        future = self._pool.submit(call)
        limit = self.call_timeout if timeout is None else timeout
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            raise Unavailable(f"{what}: libvirt did not answer within {limit:g} s") from None

    def _lost(self) -> bool:
        """The connection died under a call (libvirtd killed or restarted): its
        error says only "End of file while reading data"."""
        conn = self._conn
        if conn is None:
            return False
        try:
            return not conn.isAlive()
        except libvirt.libvirtError:
            return True

    def open(self, timeout: float = OPEN_TIMEOUT) -> libvirt.virConnect:
        return self.run(f"open {self.uri}", self.conn, timeout=timeout)

    def domain(self, name: str) -> libvirt.virDomain | None:
        """The domain by name, None if libvirt does not know it.

        Listed rather than looked up: a lookup of a VM that was never started
        (the usual case for status reads) makes libvirt log an error each time.
        A listing waits for every domain's lock, though, and a VM being destroyed
        holds its own until QEMU has exited (1-2 s under TCG; longer for a QEMU
        stuck in I/O): a handle found once is kept and asked about its own domain
        only, which no other VM holds up.
        """

        return self.run(f"lookup {name}", self.find, name, timeout=OPEN_TIMEOUT)

    def find(self, name: str) -> libvirt.virDomain | None:
        """domain(), inside a call already running on the pool."""
        conn = self.conn()
        dom = self._handles.get(name)
        if dom is not None:
            try:
                dom.isActive()  # still defined (the handle names its UUID)?
                return dom
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                self._handles.pop(name, None)  # undefined, or redefined anew
        dom = self.domain_in(conn, name)
        if dom is not None:
            self.remember(conn, dom)
        return dom

    def remember(self, conn: libvirt.virConnect, dom: libvirt.virDomain) -> None:
        """Keep a handle of `conn` (a domain just defined or found) for domain()."""
        if self._conn is conn:
            self._handles[dom.name()] = dom

    @staticmethod
    def domain_in(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
        """The same lookup inside a call already running on the pool."""
        for dom in conn.listAllDomains(0):
            if dom.name() == name:
                return dom
        return None

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._handles = {}  # each holds a reference to the connection
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)
