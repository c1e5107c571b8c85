"""Forwarding calls that need another node's local resources to that node.

A fresh guest status, a console, an upload or a node's own status can only
be answered where the guest or disk lives. The receiving node forwards the
request over HTTPS (verified with the cluster CA) with the caller's own
credentials, so the owning node authenticates and authorises it itself.
Callers on the root-only unix socket are forwarded with a short-lived
root@pam ticket. Every forward has a timeout.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from flask import Request, Response

from corral.cluster import peer
from corral.cluster.peer import node_address

__all__ = ["PROXIED", "forward", "node_address"]

PROXIED = "X-Corral-Proxied"
FORWARD_HEADERS = ("Authorization", "CSRFPreventionToken", "Content-Type", "Accept")


def forward(
    node_ctx: Any, target: str, request: Request, *, local_root: bool, timeout: float = 60
) -> Response:
    client = peer.client_for(
        node_ctx.store, node_ctx.data_dir, target, timeout=timeout, as_root=local_root
    )
    headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
    headers[PROXIED] = node_ctx.node
    if local_root:
        headers.update(client.auth_headers(request.method))
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
    answer = peer.exchange(client, target, request.method, path, headers=headers, body=body)
    out = Response(answer.body, status=answer.status, mimetype=answer.headers.get("content-type"))
    out.status = f"{answer.status} {answer.reason}"
    for header in ("X-Corral-Stale", "X-Corral-Node"):
        if answer.headers.get(header.lower()):
            out.headers[header] = answer.headers[header.lower()]
    return out
