"""Node-to-node calls made by a node's own tasks (not on behalf of an HTTP caller).

A migration's source node pushes volume streams to the target and asks it to
clean up on failure. It authenticates as root@pam with a short-lived ticket
signed with the cluster's key (every node holds it) and verifies the target's
certificate against the cluster CA. Every call has a timeout; a streamed body
goes out chunked, so a volume never has to fit in memory or on a scratch disk.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

from corral.cluster import keys
from corral.cluster.access import Access
from corral.cluster.errors import CorralError, NotFound, Unavailable
from corral.cluster.store_api import StoreAPI

CHUNK = 1 << 20


class PeerError(CorralError):
    """The other node answered with an error; carries its status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def call(
    store: StoreAPI,
    data_dir: str,
    target: str,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: IO[bytes] | None = None,
    timeout: float = 60.0,
) -> Any:
    """`method /api2/json{path}` on node `target`; returns the answer's `data`.

    With `body`, params go in the query string and the body is streamed chunked."""
    info = store.get_value(keys.node_info(target))
    if info is None:
        raise NotFound(f"no such node '{target}'")
    if store.get(keys.node_alive(target)) is None:
        raise Unavailable(f"node '{target}' is offline")
    url = urlsplit(info.get("url") or f"https://{info['address']}:8006/")
    ticket, csrf = Access(store).issue_ticket("root@pam")
    headers = {
        "Accept": "application/json",
        "Cookie": f"PVEAuthCookie={quote(ticket)}",
        "CSRFPreventionToken": csrf,
    }
    query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
    target_path = "/api2/json" + path
    payload: Any = None
    if body is not None or method in ("GET", "DELETE"):
        if query:
            target_path += "?" + query
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
            headers["Transfer-Encoding"] = "chunked"
            payload = iter(lambda: body.read(CHUNK), b"")
    else:
        payload = query
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    context = ssl.create_default_context(cafile=f"{data_dir}/ssl/ca.pem")
    conn = http.client.HTTPSConnection(
        url.hostname or info["address"], url.port or 8006, timeout=timeout, context=context
    )
    try:
        conn.request(method, target_path, body=payload, headers=headers,
                     encode_chunked=body is not None)  # fmt: skip
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as err:
        raise Unavailable(f"node '{target}' did not answer: {err}") from None
    finally:
        conn.close()
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = {}
    if resp.status >= 400:
        message = doc.get("message") or resp.reason
        errors = doc.get("errors")
        if errors:
            message = f"{message} " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        raise PeerError(resp.status, f"node '{target}': {message.strip()}")
    return doc.get("data")
