"""A create aborted while still queued leaves no record locked "create" behind
(the task never ran, so only its recovery step can remove what the API made).
In-memory store, one task worker kept busy so the create stays queued."""

from __future__ import annotations

import threading
import time
from typing import Any

from corral.cluster import keys
from corral.cluster.guest_service import GuestService
from corral.cluster.store_memory import MemoryStore
from corral.cluster.task_client import Tasks
from corral.cluster.tasks import ABORTED, TaskWorker, task_handler
from tests.web.fake_driver import FakeDriver

release = threading.Event()


@task_handler("faulttest-block")
def _block(ctx: Any, args: dict[str, Any]) -> None:
    release.wait(30)


class NoVolumes:
    def configs(self) -> dict[str, Any]:
        return {}


class Driver(FakeDriver):
    def destroy(self, vmid: int, config: dict[str, Any], **kw: Any) -> None:
        self.calls.append(("destroy", vmid))
        self.guests.pop(vmid, None)  # never built: nothing to remove


def test_aborted_queued_create_leaves_no_locked_record() -> None:
    store = MemoryStore()
    tasks = Tasks(store)
    driver = Driver(node="node1", data_dir="/nonexistent")
    store.put(keys.node_info("node1"), {"node": "node1", "address": "10.0.0.1"})
    store.put(keys.node_alive("node1"), {"since": 0})
    store.put(keys.node_status("node1"), {"maxmem": 16 << 30, "mem": 1 << 30, "cpu": 0.1})
    worker = TaskWorker(store, "node1", workers=1)  # one thread: the create must queue
    worker.context = {"drivers": {"lxc": driver}, "volumes": NoVolumes()}
    worker.start()
    release.clear()
    try:
        tasks.submit(node="node1", type="faulttest-block", id="", user="root@pam", args={})
        svc = GuestService(store, tasks, node="node1", drivers={"lxc": driver}, volumes=None)
        upid = svc.create("lxc", 901, {"hostname": "q"}, user="root@pam")
        assert store.get_value(keys.guest(901))["lock"] == "create"
        tasks.abort(upid)
        st = tasks.wait(upid, timeout=10)
        assert st["exitstatus"] == ABORTED
        assert store.get(keys.guest(901)) is None  # the ID is free again
        assert "CT 901 was not created" in "\n".join(tasks.log_lines(upid))
    finally:
        release.set()
        worker.stop()
        store.close()


@task_handler("faulttest-outage")
def _outage(ctx: Any, args: dict[str, Any]) -> None:
    ctx.log("before the outage")
    ctx.flush()
    ctx.store.set_available(False)  # etcd gone for longer than a task's end waits
    ctx.log("done during the outage")


def test_task_end_lands_after_a_long_store_outage() -> None:
    """The end of a task that could not be written through its in-line retries
    is written in the background once the store is back: the task does not read
    "running" until the node restarts. Fails without the background retry."""
    store = MemoryStore()
    tasks = Tasks(store)
    worker = TaskWorker(store, "node1", workers=1)
    worker.WRITE_ATTEMPTS = 2  # gives up in-line after ~1 s instead of 25 s
    worker.END_RETRY_SECONDS = 0.2
    worker.start()
    try:
        upid = tasks.submit(node="node1", type="faulttest-outage", id="", user="root@pam", args={})
        deadline = time.monotonic() + 10
        while store._available and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(2.5)  # past the in-line retries: the worker has moved on
        store.set_available(True)
        st = tasks.wait(upid, timeout=10)
        assert (st["status"], st["exitstatus"]) == ("stopped", "OK")
        assert tasks.log_lines(upid)[-2:] == ["done during the outage", "TASK OK"]
    finally:
        store.set_available(True)
        worker.stop()
        store.close()
