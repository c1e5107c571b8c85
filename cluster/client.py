"""The one Proxmox-API client: over the node's root-only unix socket, or HTTPS
with an API token, a login ticket or a ticket the caller issued itself.

Used by corralsh, corral and tests, and by nodes talking to each other
(corral.cluster.peer builds on it for a task's calls and for the API's
forwarding of requests to the node that owns a resource): one transport, one
place for timeouts, TLS verification and error mapping.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import sys
import time
from collections.abc import Iterable
from typing import IO, Any, NamedTuple
from urllib.parse import quote, urlencode

from corral.cluster.errors import Unavailable


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a node whose certificate is trusted by its SHA-256 fingerprint
    (`corral cluster join`, before the joining node has the cluster CA)."""

    def __init__(self, host: str, port: int, *, fingerprint: str, timeout: float) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # replaced by the fingerprint check below
        super().__init__(host, port, timeout=timeout, context=ctx)
        self.fingerprint = fingerprint.replace(":", "").upper()

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) if self.sock else None  # type: ignore[union-attr]
        got = hashlib.sha256(der or b"").hexdigest().upper()
        if got != self.fingerprint:
            self.close()
            pretty = ":".join(got[i : i + 2] for i in range(0, len(got), 2))
            raise ssl.SSLError(f"certificate fingerprint mismatch: the node presented {pretty}")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Answer(NamedTuple):
    """A node's raw HTTP answer."""

    status: int
    reason: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def doc(self) -> dict[str, Any]:
        """The JSON envelope ({} when the body is not JSON)."""
        try:
            doc = json.loads(self.body) if self.body else {}
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}


class ApiError(Exception):
    def __init__(self, status: int, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or {}


class Client:
    """A minimal Proxmox-API client: unix socket, token or ticket."""

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        host: str | None = None,
        port: int = 8006,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        verify: bool = False,
        cafile: str | None = None,
        timeout: float = 60,
        fingerprint: str | None = None,
        ticket: str | None = None,
        csrf: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout
        self.fingerprint = fingerprint
        self.ticket: str | None = ticket
        self.csrf: str | None = csrf
        if host:
            self.ssl_ctx = ssl.create_default_context(cafile=cafile)
            if not verify and not cafile:
                self.ssl_ctx.check_hostname = False
                self.ssl_ctx.verify_mode = ssl.CERT_NONE
        if host and not token and user:
            data = self.call(
                "POST", "/access/ticket", {"username": user, "password": password or ""}
            )
            self.ticket, self.csrf = data["ticket"], data["CSRFPreventionToken"]

    def _conn(self) -> http.client.HTTPConnection:
        if self.socket_path:
            return UnixHTTPConnection(self.socket_path, self.timeout)
        if self.fingerprint:
            return PinnedHTTPSConnection(
                self.host or "127.0.0.1",
                self.port,
                fingerprint=self.fingerprint,
                timeout=self.timeout,
            )
        return http.client.HTTPSConnection(
            self.host or "127.0.0.1", self.port, timeout=self.timeout, context=self.ssl_ctx
        )

    @property
    def where(self) -> str:
        return self.socket_path or f"{self.host}:{self.port}"

    def auth_headers(self, method: str) -> dict[str, str]:
        if self.token:
            return {"Authorization": f"PVEAPIToken={self.token}"}
        if self.ticket:
            headers = {"Cookie": f"PVEAuthCookie={quote(self.ticket)}"}
            if method != "GET" and self.csrf:
                headers["CSRFPreventionToken"] = self.csrf
            return headers
        return {}

    def exchange(
        self,
        method: str,
        target: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | str | IO[bytes] | Iterable[bytes] | None = None,
        chunked: bool = False,
    ) -> Answer:
        """One request to `target` (path and query, as sent); the raw answer.
        Unavailable if the node cannot be reached or does not answer in time."""
        conn = self._conn()
        try:
            conn.request(method, target, body=body, headers=headers or {},
                         encode_chunked=chunked)  # fmt: skip
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as err:
            raise Unavailable(f"{self.where} did not answer: {err}", reason=str(err)) from None
        finally:
            conn.close()
        return Answer(resp.status, resp.reason, {k.lower(): v for k, v in resp.getheaders()}, raw)

    def call_full(
        self, method: str, path: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        url = "/api2/json/" + "/".join(
            quote(p, safe="@!:=") for p in path.strip("/").split("/") if p
        )
        body = None
        headers = {"Accept": "application/json", **self.auth_headers(method)}
        if method in ("GET", "DELETE"):
            if params:
                url += "?" + urlencode(params)
        else:
            body = urlencode(params)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            answer = self.exchange(method, url, headers=headers, body=body)
        except Unavailable as err:
            reason = err.kwargs.get("reason", err)
            raise ApiError(0, f"cannot reach corrald at {self.where}: {reason}") from None
        doc = answer.doc()
        if answer.status >= 400:
            raise ApiError(answer.status, doc.get("message") or answer.reason, doc.get("errors"))
        return doc

    def call(self, method: str, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.call_full(method, path, params).get("data")

    def follow_task(
        self, upid: str, *, out: Any = sys.stderr, quiet: bool = False, timeout: float = 3600
    ) -> dict[str, Any]:
        node = upid.split(":")[1]
        seen = 0
        deadline = time.monotonic() + timeout
        last_progress = None
        while True:
            status = self.call("GET", f"/nodes/{node}/tasks/{upid}/status")
            log = self.call_full(
                "GET", f"/nodes/{node}/tasks/{upid}/log", {"start": seen, "limit": 0}
            )
            for line in log.get("data") or []:
                seen = max(seen, line["n"])
                if not quiet:
                    print(line["t"], file=out, flush=True)
            progress = status.get("progress")
            if (
                not quiet
                and progress is not None
                and progress != last_progress
                and status["status"] == "running"
            ):
                print(f"progress {progress * 100:.0f}%", file=out, flush=True)
                last_progress = progress
            if status["status"] == "stopped":
                return status
            if time.monotonic() > deadline:
                raise ApiError(0, f"task {upid} still running after {timeout:.0f} s")
            time.sleep(0.2)
