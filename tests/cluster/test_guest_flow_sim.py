"""The guest flow on the in-memory store and a virtual clock: no etcd, no threads, no sleeping.

Two nodes' task workers run in this process on fake drivers; every watch
delivery, task run and lease renewal is a callback of the virtual clock, so
the whole create -> start -> migrate -> destroy flow is one deterministic run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from corral.cluster import guests, keys
from corral.cluster.clock import VirtualClock
from corral.cluster.store_memory import MemoryStore
from corral.cluster.task_client import Tasks
from corral.cluster.tasks import TaskWorker
from tests.web.fake_driver import FakeDriver

NODES = ("node1", "node2")


class Sim:
    def __init__(self) -> None:
        self.clock = VirtualClock()
        self.store = MemoryStore(clock=self.clock)
        self.tasks = Tasks(self.store)
        self.drivers: dict[str, FakeDriver] = {}
        self.workers: list[TaskWorker] = []
        for i, name in enumerate(NODES):
            self.drivers[name] = FakeDriver(node=name, data_dir="/nonexistent")
            alive = self.store.keep_lease(10)  # what the daemon keeps while it lives
            self.store.put(keys.node_info(name), {"node": name, "address": f"10.0.0.{i + 1}"})
            self.store.put(keys.node_alive(name), {"since": 0}, lease=alive.id)
            worker = TaskWorker(self.store, name)
            worker.context = {
                "drivers": {"lxc": self.drivers[name]},
                "volumes": object(),
                "lease_id": alive.id,
            }
            worker.start()
            self.workers.append(worker)
        self.store.put(
            keys.storage("shared"), {"storage": "shared", "type": "dir", "path": "/x", "shared": 1}
        )

    def run(self, node: str, task: str, vmid: int, **args: Any) -> dict[str, Any]:
        upid = self.tasks.submit(
            node=node,
            type=task,
            id=str(vmid),
            user="root@pam",
            args={"vmid": vmid, **args},
            serial=guests.serial(vmid),
        )
        assert self.clock.run_until(lambda: self.tasks.status(upid)["status"] == "stopped")
        status = self.tasks.status(upid)
        assert status["exitstatus"] == "OK", (status, self.tasks.log_lines(upid))
        return status

    def record(self, vmid: int) -> Any:
        return self.store.get_value(keys.guest(vmid))


@pytest.fixture
def sim(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sim]:
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s of real time")

    # Compare thread sets, not counts: threads of earlier test modules may still be
    # exiting while this runs, which changes the count without this test starting any.
    before = set(threading.enumerate())
    monkeypatch.setattr(time, "sleep", no_sleep)
    s = Sim()
    yield s
    for w in s.workers:
        w.stop()
    s.store.close()
    started = [t.name for t in threading.enumerate() if t not in before]
    assert not started, f"something started a thread: {started}"
    assert s.clock.errors == []


def test_create_start_migrate_destroy(sim: Sim) -> None:
    vmid = 300
    record = {
        "vmid": vmid,
        "type": "lxc",
        "node": "node1",
        "config": {"hostname": "sim", "memory": 256, "rootfs": "shared:1"},
        "pending": {},
        "pending_delete": [],
        "lock": "create",
        "created": int(sim.clock.time()),
    }
    assert sim.store.create(keys.guest(vmid), record)
    created = sim.run("node1", "vzcreate", vmid, params={}, start=1)
    rec = sim.record(vmid)
    assert rec["lock"] is None and rec["config"]["rootfs"].startswith("shared:subvol-300")
    assert sim.drivers["node1"].guests[vmid]["status"] == "running"
    assert created["starttime"] == int(sim.clock.time())  # task times come from the clock

    sim.run("node1", "vzmigrate", vmid, target="node2", restart=1)
    assert sim.record(vmid)["node"] == "node2" and sim.record(vmid)["lock"] is None
    assert vmid not in sim.drivers["node1"].guests
    assert sim.drivers["node2"].guests[vmid]["status"] == "running"
    assert [c for c in sim.drivers["node2"].calls if c[1] == vmid] == [
        ("adopt", vmid),
        ("start", vmid),
    ]
    live = guests.live_status(sim.store)
    assert live[str(vmid)]["status"] == "running"
    assert 1_800_000_000 <= live[str(vmid)]["time"] <= sim.clock.time()  # the virtual clock's

    sim.run("node2", "vzstop", vmid)
    sim.run("node2", "vzdestroy", vmid)
    assert sim.record(vmid) is None and vmid not in sim.drivers["node2"].guests
    assert str(vmid) not in guests.live_status(sim.store)

    # The nodes' leases were renewed on the virtual clock all along.
    sim.clock.advance(120)
    assert all(sim.store.get(keys.node_alive(n)) for n in NODES)


def test_a_destroy_ends_in_one_write_that_removes_the_guest(sim: Sim) -> None:
    """The record, its live entry and the task's end land in one transaction: whoever
    sees the task OK finds the guest gone, and no write is spent on each apart."""
    vmid = 301
    record = {
        "vmid": vmid, "type": "lxc", "node": "node1", "lock": "create", "pending": {},
        "pending_delete": [], "config": {"memory": 256, "rootfs": "shared:1"},
    }  # fmt: skip
    assert sim.store.create(keys.guest(vmid), record)
    sim.run("node1", "vzcreate", vmid, params={})
    services = sim.workers[0].context
    other = {"vmid": 999, "status": "stopped"}
    services["status_doc"] = {str(vmid): {"status": "stopped"}, "999": other}
    sim.store.put(keys.guest_status("node1", vmid), {"status": "stopped"})
    events: list[Any] = []
    watch = sim.store.watch("", events.append)
    upid = sim.tasks.submit(node="node1", type="vzdestroy", id=str(vmid), user="root@pam",
                            args={"vmid": vmid}, serial=guests.serial(vmid))  # fmt: skip
    assert sim.clock.run_until(lambda: sim.tasks.status(upid)["status"] == "stopped")
    sim.clock.advance(1)  # the watch has delivered
    watch.cancel()
    assert sim.tasks.status(upid)["exitstatus"] == "OK"
    assert sim.record(vmid) is None and sim.store.get(keys.guest_status("node1", vmid)) is None
    assert services["status_doc"] == {"999": other}
    gone = {e.key: e.revision for e in events if e.kind == "delete"}
    end = [e.revision for e in events if e.kind == "put" and e.key.startswith("tasks/")
           and e.value["status"] == "stopped"]  # fmt: skip
    assert gone == {keys.guest(vmid): end[0], keys.guest_status("node1", vmid): end[0]}


def test_a_created_guest_is_published_stopped_by_the_creates_end(sim: Sim) -> None:
    """A guest created without `start` is listed "stopped" once its task is OK (as
    Proxmox lists it), not "unknown" until the node's next status round: its entry
    is written in the transaction that ends the create."""
    vmid = 302
    record = {
        "vmid": vmid, "type": "lxc", "node": "node1", "lock": "create", "pending": {},
        "pending_delete": [], "config": {"memory": 256, "rootfs": "shared:1"},
    }  # fmt: skip
    services = sim.workers[0].context
    services["status_doc"] = {}  # the node has published its first round
    assert sim.store.create(keys.guest(vmid), record)
    events: list[Any] = []
    watch = sim.store.watch("", events.append)
    sim.run("node1", "vzcreate", vmid, params={})
    sim.clock.advance(1)  # the watch has delivered
    watch.cancel()
    entry = sim.store.get(keys.guest_status("node1", vmid))
    assert entry is not None and entry.value["status"] == "stopped"
    assert entry.value["maxmem"] == 256 << 20  # measured from the record as created
    assert services["status_doc"][str(vmid)]["status"] == "stopped"
    end = [e.revision for e in events if e.kind == "put" and e.key.startswith("tasks/")
           and e.value["status"] == "stopped"]  # fmt: skip
    assert entry.mod_revision == end[0]


def test_a_task_on_a_dead_node_waits_and_its_keys_expire(sim: Sim) -> None:
    """A node whose lease is not renewed drops out after its TTL, in virtual time."""
    lease = sim.store.lease_grant(5)
    sim.store.put(keys.node_alive("node3"), {"since": 0}, lease=lease)
    upid = sim.tasks.submit(node="node3", type="vzstart", id="1", user="root@pam", args={})
    sim.clock.advance(4)
    assert sim.store.get(keys.node_alive("node3")) is not None
    sim.clock.advance(2)
    assert sim.store.get(keys.node_alive("node3")) is None
    assert sim.tasks.status(upid)["status"] == "running"  # queued: nobody runs node3's tasks
