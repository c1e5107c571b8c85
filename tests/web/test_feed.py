"""The console's pushed state feed (/cluster/feed) against a real corrald: what it
sends first, how fast a change arrives, and that it filters by the caller's privileges
as /cluster/resources does."""

from __future__ import annotations

import json
import ssl
import time
from typing import Any
from urllib.parse import quote

import pytest
import websocket

from corral.cluster import keys
from corral.cluster.store import Store
from tests.util import ApiSession, Corrald

pytestmark = pytest.mark.timeout(120)


def open_feed(node: Corrald, api: ApiSession) -> Any:
    return websocket.create_connection(
        node.url.replace("https://", "wss://") + "/api2/json/cluster/feed",
        cookie=f"PVEAuthCookie={quote(api.ticket, safe='')}",
        sslopt={"ca_certs": api.ca, "cert_reqs": ssl.CERT_REQUIRED},
        timeout=10,
    )


def next_with(ws: Any, predicate: Any, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if predicate(msg):
            return msg  # type: ignore[no-any-return]
    raise AssertionError("no such message in time")


def test_the_feed_pushes_changes_filtered_by_privileges(corrald: Corrald) -> None:
    admin = corrald.session()
    admin.post("/access/users", data={"userid": "nobody@pve", "password": "long enough pw"})
    nobody = corrald.session("nobody@pve", "long enough pw")
    store = Store([f"http://127.0.0.1:{corrald.etcd_port}"])
    vmid = 4343
    ws = open_feed(corrald, admin)
    ws2 = open_feed(corrald, nobody)
    try:
        first = json.loads(ws.recv())
        assert {"resources", "status", "tasks"} <= set(first)
        assert any(r["id"] == "node/node1" for r in first["resources"])
        json.loads(ws2.recv())
        started = time.monotonic()
        # A guest record as the guest service writes it (the feed is about pushing).
        store.put(keys.guest(vmid), {"vmid": vmid, "type": "lxc", "node": "node1",
                                     "config": {"hostname": "pushed"}})  # fmt: skip
        msg = next_with(ws, lambda m: any(r.get("vmid") == vmid for r in m.get("resources", [])))
        latency = time.monotonic() - started
        assert "tasks" not in msg  # only what changed
        print(f"\nfeed: a new guest reached the client in {latency * 1000:.0f} ms")
        assert latency < 2.0
        # The unprivileged user's feed never shows it.
        ws2.settimeout(2)
        try:
            while True:
                seen = json.loads(ws2.recv())
                assert not any(r.get("vmid") == vmid for r in seen.get("resources", []))
        except websocket.WebSocketTimeoutException:
            pass
    finally:
        ws.close()
        ws2.close()
        store.delete(keys.guest(vmid))
        store.close()
    r = admin.get("/cluster/feed")
    assert r.status_code == 400 and "WebSocket" in r.json()["message"]
    assert corrald.anonymous().get("/cluster/feed").status_code == 401
