"""Forwarding calls that need another node's local resources to that node.

A fresh guest status, a console, an upload or a node's own status can only
be answered where the guest or disk lives. The receiving node forwards the
request over HTTPS (verified with the cluster CA) with the caller's own
credentials, so the owning node authenticates and authorises it itself.
Callers on the root-only unix socket are forwarded with a short-lived
root@pam ticket. Every forward has a timeout.
"""

from __future__ import annotations

import http.client
import ssl
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from flask import Request, Response

from corral.cluster import keys
from corral.cluster.errors import NotFound, Unavailable

PROXIED = "X-Corral-Proxied"
FORWARD_HEADERS = ("Authorization", "CSRFPreventionToken", "Content-Type", "Accept")


def node_address(store: Any, target: str) -> tuple[str, int]:
    """Where an online node's API listens (host, port)."""
    info = store.get_value(keys.node_info(target))
    if info is None:
        raise NotFound(f"no such node '{target}'")
    if store.get(keys.node_alive(target)) is None:
        raise Unavailable(f"node '{target}' is offline")
    url = urlsplit(info.get("url") or f"https://{info['address']}:8006/")
    return url.hostname or info["address"], url.port or 8006


def forward(
    node_ctx: Any, target: str, request: Request, *, local_root: bool, timeout: float = 60
) -> Response:
    host, port = node_address(node_ctx.store, target)
    ca = f"{node_ctx.data_dir}/ssl/ca.pem"
    ctx = ssl.create_default_context(cafile=ca)
    headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
    headers[PROXIED] = node_ctx.node
    if local_root:
        ticket, csrf = node_ctx.access.issue_ticket("root@pam")
        headers["Cookie"] = f"PVEAuthCookie={quote(ticket)}"
        headers["CSRFPreventionToken"] = csrf
    elif "PVEAuthCookie" in request.cookies:
        # Browsers send the ticket %-encoded (the console does), scripts raw: encode once.
        ticket = unquote(request.cookies["PVEAuthCookie"])
        headers["Cookie"] = f"PVEAuthCookie={quote(ticket)}"
    path = request.full_path if request.query_string else request.path
    body: Any = None
    if request.content_length:
        # Streamed through (an ISO upload must not be held in memory here).
        headers["Content-Length"] = str(request.content_length)
        body = request.stream
    elif request.method in ("POST", "PUT"):
        body = request.get_data() or None
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    try:
        conn.request(request.method, path, body=body, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as err:
        raise Unavailable(f"node '{target}' did not answer: {err}") from None
    finally:
        conn.close()
    out = Response(body, status=resp.status, mimetype=resp.getheader("Content-Type"))
    out.status = f"{resp.status} {resp.reason}"
    for header in ("X-Corral-Stale", "X-Corral-Node"):
        if resp.getheader(header):
            out.headers[header] = resp.getheader(header)
    return out
