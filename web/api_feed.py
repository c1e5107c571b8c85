"""A pushed feed of the cluster's state for the web console (a corral extension).

`GET /api2/json/cluster/feed` upgrades to a WebSocket that sends, as JSON text
messages, what `/cluster/resources`, `/cluster/status` and `/cluster/tasks`
answer (filtered by the caller's privileges, exactly as those calls are),
each time it changed: `{"resources": [...], "status": [...], "tasks": [...]}`
with only the parts that changed. The node's in-memory cluster view follows
etcd through one watch; the feed looks at its revision every CHECK_EVERY
seconds and only rebuilds the answers when the store moved, so a quiet
cluster costs nothing and a change reaches the browser within a second
instead of at the next poll. Privileges are read afresh for each rebuild, and
a feed ends after FEED_LIFETIME (the client reconnects, authenticating anew).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
from flask import Flask, Response

from corral.cluster.cluster_view import shared_view
from corral.cluster.errors import CorralError, ParamError
from corral.web.api import Ctx, endpoint
from corral.web.api_core import cluster_status, resources
from corral.web.api_tasks import cluster_tasks
from corral.web.app import dispatch, on_app
from corral.web.websocket import WebSocket, is_upgrade, take_over

CHECK_EVERY = 0.25
FEED_LIFETIME = 3600.0
KEEPALIVE = 25.0  # an empty message now and then keeps proxies from closing a quiet feed


def _fresh(ctx: Ctx) -> None:
    # Ctx caches privileges for one request; a feed lives long, ACLs change.
    for cached in ("_privs", "_snapshot"):
        ctx.__dict__.pop(cached, None)


def snapshot(ctx: Ctx) -> dict[str, bytes]:
    _fresh(ctx)
    dump = orjson.dumps
    return {
        "resources": dump(resources(ctx)),
        "status": dump(cluster_status(ctx)),
        "tasks": dump(cluster_tasks(ctx)),
    }


@endpoint(
    "GET",
    "/cluster/feed",
    description="corral extension: a WebSocket pushing /cluster/resources, /cluster/status "
    "and /cluster/tasks whenever they change.",
)
def feed(ctx: Ctx) -> Any:
    environ = ctx.request.environ
    if not is_upgrade(environ):
        raise ParamError(message="/cluster/feed needs a WebSocket upgrade request")
    view = shared_view(ctx.services, ctx.store)
    conn = take_over(environ)
    try:
        ws = WebSocket(conn)
        try:
            ws.accept(environ, prefer=())
        except CorralError:
            return Response(b"", status=400)
        # Reading keeps the close handshake and pings answered.
        reader = threading.Thread(target=lambda: [None for _ in ws.messages()], daemon=True)
        reader.start()
        sent: dict[str, bytes] = {}
        seen = -1
        started = last_sent = time.monotonic()
        while not ws.closed.is_set() and time.monotonic() - started < FEED_LIFETIME:
            revision = view.revision
            if revision != seen:
                seen = revision
                now = snapshot(ctx)
                changed = {k: v for k, v in now.items() if sent.get(k) != v}
                if changed:
                    body = b"{" + b",".join(
                        b'"%s":%s' % (k.encode(), v) for k, v in changed.items()
                    )
                    ws.send((body + b"}").decode())
                    sent.update(changed)
                    last_sent = time.monotonic()
            if time.monotonic() - last_sent > KEEPALIVE:
                ws.send("{}")
                last_sent = time.monotonic()
            ws.closed.wait(CHECK_EVERY)
        ws.close()
        reader.join(5)
    finally:
        conn.release()
    return Response(b"", status=101)


@on_app
def _feed_route(app: Flask, node: Any) -> None:
    # WebSocket upgrades reach only rules marked websocket=True (see api_console).
    @app.route("/api2/json/cluster/feed", methods=["GET"], websocket=True)
    def feed_upgrade() -> Response:
        return dispatch(node, "cluster/feed")
