"""/cluster/resources, /nodes and /cluster/status served from the node's in-memory view.

Runs on etcd and on the in-memory store (the `store` fixture): permissions
still filter row by row, a write is visible to the next read, and an answer
the view could not bring up to date carries X-Corral-Stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from corral.cluster import keys
from corral.cluster.access import Access
from corral.cluster.store_api import StoreAPI
from corral.cluster.store_memory import MemoryStore
from corral.cluster.task_client import Tasks
from corral.web.app import NodeContext, create_app
from tests.web.test_guest_flow import Api


def _guest(vmid: int) -> dict[str, Any]:
    return {"vmid": vmid, "type": "qemu", "node": "node1", "config": {"name": f"g{vmid}"}}


@pytest.fixture
def app(store: StoreAPI) -> Iterator[tuple[Any, Access, StoreAPI]]:
    store.put(keys.node_info("node1"), {"node": "node1", "nodeid": 1, "address": "10.0.0.1"})
    store.put(keys.node_alive("node1"), {"since": 0})
    store.put(keys.CLUSTER, {"name": "c1", "version": 1})
    for vmid in (101, 102, 103):
        store.put(keys.guest(vmid), _guest(vmid))
    access = Access(store)
    services: dict[str, Any] = {}
    ctx = NodeContext(store, access, Tasks(store), "node1", "/nonexistent", services)  # type: ignore[arg-type]
    yield create_app(ctx).test_client(), access, store
    if "cluster_view" in services:
        services["cluster_view"].stop()


def _token_api(client: Any, access: Access, user: str) -> Api:
    access.create_user(user)
    secret = access.create_token(user, "t", privsep=0)["value"]
    return Api(client, {"HTTP_AUTHORIZATION": f"PVEAPIToken={user}!t={secret}"})


def test_rows_are_filtered_by_each_guests_acl(app: tuple[Any, Access, StoreAPI]) -> None:
    client, access, store = app
    everyone = _token_api(client, access, "all@pve")
    access.add_acl("/vms", "all@pve", "PVEAuditor")
    one = _token_api(client, access, "one@pve")
    none = _token_api(client, access, "none@pve")
    assert [r["vmid"] for r in everyone.ok("GET", "/cluster/resources", type="vm")] == [
        101,
        102,
        103,
    ]
    assert none.ok("GET", "/cluster/resources", type="vm") == []
    access.add_acl("/vms/102", "one@pve", "PVEAuditor")
    assert [r["vmid"] for r in one.ok("GET", "/cluster/resources", type="vm")] == [102]
    # An ACL below /vms/ for someone else: "all" is checked guest by guest, same answer.
    assert len(everyone.ok("GET", "/cluster/resources", type="vm")) == 3


def test_a_write_is_in_the_next_answer(app: tuple[Any, Access, StoreAPI]) -> None:
    client, _, store = app
    root = Api(client)
    assert len(root.ok("GET", "/cluster/resources", type="vm")) == 3
    store.put(keys.guest(104), _guest(104))
    store.delete(keys.guest(101))
    store.put(keys.guest_status("node1", 102), {"status": "running", "uptime": 5})
    rows = {r["vmid"]: r for r in root.ok("GET", "/cluster/resources", type="vm")}
    assert sorted(rows) == [102, 103, 104] and rows[102]["status"] == "running"
    status = root.ok("GET", "/cluster/status")
    assert status[0] == {
        "type": "cluster",
        "id": "cluster",
        "name": "c1",
        "nodes": 1,
        "quorate": 1,
        "version": 1,
    }
    assert status[1]["ip"] == "10.0.0.1" and status[1]["online"] == 1
    store.delete(keys.node_alive("node1"))
    assert root.ok("GET", "/nodes")[0]["status"] == "offline"


def test_an_answer_without_quorum_says_it_is_stale(
    app: tuple[Any, Access, StoreAPI],
) -> None:
    client, _, store = app
    if not isinstance(store, MemoryStore):
        pytest.skip("quorum loss is simulated by the in-memory store; tests/lab cuts a real one")
    root = Api(client)
    r = root.call("GET", "/cluster/resources")
    assert r.status_code == 200 and "X-Corral-Stale" not in r.headers
    store.set_quorate(False)
    r = root.call("GET", "/cluster/resources")
    assert r.status_code == 200 and r.headers["X-Corral-Stale"] == "1"
    assert len([row for row in r.get_json()["data"] if row["type"] == "qemu"]) == 3
    assert root.ok("GET", "/cluster/status")[0]["quorate"] == 0
