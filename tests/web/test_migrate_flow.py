"""Migration and placement through the real app, etcd and two nodes' task workers.

Both nodes live in this process (fake drivers, one worker each, one etcd), so the
flow's rules — preconditions, restart migration, hand-over of the record, the
start on the target, undo on failure — are tested fast; the lab test moves a
real container between real nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from corral.cluster import keys
from corral.cluster.access import Access
from corral.cluster.store import Store
from corral.cluster.task_client import Tasks
from corral.web.app import NodeContext, create_app
from tests.web.fake_driver import FakeDriver, fake_node
from tests.web.test_guest_flow import Api


@pytest.fixture
def lab(store: Store) -> Iterator[tuple[Api, dict[str, FakeDriver], Store]]:
    drivers: dict[str, FakeDriver] = {}
    workers = []
    for i, name in enumerate(("node1", "node2", "node3")):
        # node2 has the most free memory, node3 the least.
        free = {"node1": 8, "node2": 12, "node3": 2}[name]
        drivers[name], worker = fake_node(store, name, address=f"10.0.0.{i + 1}", free_gib=free)
        workers.append(worker)
    store.put(keys.storage("shared"), {"storage": "shared", "type": "dir", "path": "/srv/x",
                                       "shared": 1})  # fmt: skip
    store.put(keys.storage("local"), {"storage": "local", "type": "dir", "path": "/var/x"})
    store.put(keys.storage("solo"), {"storage": "solo", "type": "dir", "path": "/var/y",
                                     "nodes": "node1"})  # fmt: skip
    services: dict[str, Any] = {"drivers": {"lxc": drivers["node1"]}, "volumes": object()}
    ctx = NodeContext(store, Access(store), Tasks(store), "node1", "/nonexistent", services)
    yield Api(create_app(ctx).test_client()), drivers, store
    for w in workers:
        w.stop()


def _node_of(store: Store, vmid: int) -> str:
    return str(store.get_value(keys.guest(vmid))["node"])


def test_restart_migration_moves_a_running_container(
    lab: tuple[Api, dict[str, FakeDriver], Store],
) -> None:
    api, drivers, store = lab
    api.task("POST", "/nodes/node1/lxc", vmid=300, hostname="m", rootfs="shared:1", start=1)
    pre = api.ok("GET", "/nodes/node1/lxc/300/migrate")
    assert pre["running"] == 1 and pre["allowed_nodes"] == ["node2", "node3"]
    assert pre["local_disks"] == [] and pre["not_allowed_nodes"] == {}
    r = api.call("POST", "/nodes/node1/lxc/300/migrate", target="node2")
    assert r.status_code == 400 and "restart" in r.get_json()["errors"]

    status = api.task("POST", "/nodes/node1/lxc/300/migrate", target="node2", restart=1)
    assert status["exitstatus"] == "OK", status
    assert _node_of(store, 300) == "node2"
    assert 300 not in drivers["node1"].guests
    assert drivers["node2"].guests[300]["status"] == "running"
    assert [c for c in drivers["node1"].calls if c[1] == 300][-2:] == [
        ("shutdown", 300),
        ("release", 300),
    ]
    assert [c for c in drivers["node2"].calls if c[1] == 300] == [("adopt", 300), ("start", 300)]
    # The guest now answers under its new node only.
    assert api.call("GET", "/nodes/node1/lxc/300/config").status_code == 404
    assert api.ok("GET", "/nodes/node2/lxc/300/config")["hostname"] == "m"


def test_migration_without_target_picks_the_node_with_most_free_memory(
    lab: tuple[Api, dict[str, FakeDriver], Store],
) -> None:
    api, _, store = lab
    api.task("POST", "/nodes/node3/lxc", vmid=301, rootfs="shared:1")
    assert api.task("POST", "/nodes/node3/lxc/301/migrate")["exitstatus"] == "OK"
    assert _node_of(store, 301) == "node2"


def test_create_on_node_auto_places_by_free_memory(
    lab: tuple[Api, dict[str, FakeDriver], Store],
) -> None:
    api, _, store = lab
    upid = api.ok("POST", "/nodes/auto/lxc", vmid=302, memory=512, rootfs="shared:1")
    assert upid.startswith("UPID:node2:")
    assert _node_of(store, 302) == "node2"
    # More memory than any node has free: a clear refusal, nothing recorded.
    r = api.call("POST", "/nodes/auto/lxc", vmid=303, memory=64 * 1024)
    assert r.status_code == 503 and "memory" in r.get_json()["message"]
    assert store.get(keys.guest(303)) is None


def test_volumes_on_storage_the_target_lacks_block_migration_with_reasons(
    lab: tuple[Api, dict[str, FakeDriver], Store],
) -> None:
    api, drivers, store = lab
    api.task("POST", "/nodes/node1/lxc", vmid=304, rootfs="solo:1")
    pre = api.ok("GET", "/nodes/node1/lxc/304/migrate")
    assert pre["allowed_nodes"] == []
    assert pre["not_allowed_nodes"] == {
        "node2": {"unavailable_storages": ["solo"]},
        "node3": {"unavailable_storages": ["solo"]},
    }
    assert pre["local_disks"] == [
        {"volid": "solo:subvol-304-disk-0", "drivename": "rootfs", "is_unused": 0}
    ]
    r = api.call("POST", "/nodes/node1/lxc/304/migrate", target="node2")
    assert r.status_code == 400 and "solo:subvol-304-disk-0" in r.get_json()["errors"]["target"]
    assert _node_of(store, 304) == "node1" and 304 in drivers["node1"].guests


def test_local_volumes_on_a_storage_every_node_has_are_copyable(
    lab: tuple[Api, dict[str, FakeDriver], Store],
) -> None:
    api, _, _ = lab
    api.task("POST", "/nodes/node1/lxc", vmid=308, rootfs="local:1")
    pre = api.ok("GET", "/nodes/node1/lxc/308/migrate")
    assert pre["allowed_nodes"] == ["node2", "node3"]
    assert [d["volid"] for d in pre["local_disks"]] == ["local:subvol-308-disk-0"]


@pytest.mark.parametrize(
    ("params", "bad"),
    [
        ({"target": "node1"}, "target"),
        ({"target": "nosuch"}, None),
        ({"target": "node2", "target-storage": "local"}, "target-storage"),
        ({"target": "node2", "online": 1}, None),
    ],
)
def test_bad_migrations_are_refused_and_change_nothing(
    lab: tuple[Api, dict[str, FakeDriver], Store], params: dict[str, Any], bad: str | None
) -> None:
    api, drivers, store = lab
    api.task("POST", "/nodes/node1/lxc", vmid=305, rootfs="shared:1", start=1)
    r = api.call("POST", "/nodes/node1/lxc/305/migrate", **params)
    assert r.status_code in (400, 404), r.get_data(True)
    if bad:
        assert bad in r.get_json()["errors"]
    assert _node_of(store, 305) == "node1"
    assert drivers["node1"].guests[305]["status"] == "running"
    assert store.get_value(keys.guest(305)).get("lock") in (None, "")


def test_offline_target_is_refused(lab: tuple[Api, dict[str, FakeDriver], Store]) -> None:
    api, _, store = lab
    api.task("POST", "/nodes/node1/lxc", vmid=306, rootfs="shared:1")
    store.delete(keys.node_alive("node3"))
    r = api.call("POST", "/nodes/node1/lxc/306/migrate", target="node3")
    assert r.status_code == 400 and "offline" in r.get_json()["errors"]["target"]
    assert _node_of(store, 306) == "node1"


def test_failed_start_on_target_is_reported(lab: tuple[Api, dict[str, FakeDriver], Store]) -> None:
    api, drivers, store = lab
    api.task("POST", "/nodes/node1/lxc", vmid=307, rootfs="shared:1", start=1)

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("no bridge vmbr9 on node2")

    drivers["node2"].start = broken  # type: ignore[method-assign]
    status = api.task("POST", "/nodes/node1/lxc/307/migrate", target="node2", restart=1)
    assert status["exitstatus"] != "OK"
    # The record moved (the volumes are on shared storage): it is node2's now, stopped,
    # unlocked, and the failure is in the task's status for the operator.
    rec = store.get_value(keys.guest(307))
    assert rec["node"] == "node2" and not rec.get("lock")
    assert 307 not in drivers["node1"].guests
