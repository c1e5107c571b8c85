"""Submitting and reading tasks from any node (the worker side: tasks.py).

A task for this process's own node is handed to its worker at once, and a quick
one is answered ended (settle); others are recorded "queued" for their node's
worker to claim.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from corral.cluster.errors import NotFound, Unavailable
from corral.cluster.schema import ignored_notes
from corral.cluster.store_api import StoreAPI
from corral.cluster.tasks import TaskWorker, Upid, local_worker, record_key

# How long an API request that queued a task on its own node may wait for that
# task's end before answering with the UPID (Tasks.settle). Clients poll task
# status once a second (proxmoxer, Ansible): a task that ends within this (a CT
# start/stop, a VM start) is OK at their first poll instead of one poll later.
# Bounded, so a slow task holds the request thread no longer than this.
SETTLE_SECONDS = 0.5
# A task whose record put failed with an unknown outcome is voided: another node's
# task gets its abort flag once etcd answers, tried every VOID_RETRY_SECONDS.
VOID_RETRY_SECONDS = 1.0
VOID_ATTEMPTS = 120


class Tasks:
    """Cluster-wide task bookkeeping (any node can submit and read)."""

    def __init__(self, store: StoreAPI) -> None:
        self.store = store
        self.clock = store.clock

    def submit(
        self,
        *,
        node: str,
        type: str,
        id: str,
        user: str,
        args: dict[str, Any] | None = None,
        serial: str | None = None,
        notes: list[str] | None = None,
    ) -> str:
        """`notes`: lines the task's log starts with. The Proxmox parameters that the API
        request starting this task gave without effect are always among them."""
        upid, key, record = self.prepare(
            node=node, type=type, id=id, user=user, args=args, serial=serial, notes=notes
        )
        worker = local_worker(self.store, node)
        if worker is not None and worker.reserve(upid, serial):
            # This process's own worker is quiet for this guest and will run the task
            # at once: it is recorded as running, which saves the worker's claim (a
            # compare-and-swap, one etcd round trip). Still durable: a node restarted
            # while it ran finds it running and ends it as interrupted. The task
            # begins as the put leaves: an early handler prepares meanwhile, and
            # nothing changes before the put has landed (TaskContext.recorded).
            record["status"] = "running"
            landing = worker.begin_reserved(orjson.loads(orjson.dumps(record)))
            try:
                revision = self.store.put(key, record)
            except BaseException:
                self._void(node, upid, key, worker)  # first: should the put land late
                landing.failed()  # the task ends unrun, unrecorded
                raise
            landing.landed(revision)
            return upid
        if worker is not None:
            worker.expect(upid)  # its watch may deliver the put before the put returns
        try:
            revision = self.store.put(key, record)
        except BaseException:
            self._void(node, upid, key, worker)
            raise
        if worker is not None:
            # Recorded first (durable); the watch delivers the same put later, ignored.
            worker.offer(orjson.loads(orjson.dumps(record)), revision)
        return upid

    def _void(self, node: str, upid: str, key: str, worker: TaskWorker | None) -> None:
        """The put of `upid`'s record failed with an unknown outcome (a timeout, a reset
        connection): a frozen etcd may still apply it when it thaws, after the API
        answered 503. The task must then never run: the node's worker ends it unrun
        (void), and for another node's worker an abort flag is set once etcd answers."""
        if worker is not None:
            worker.void(upid)
            return

        def abort_late(attempt: int = 0) -> None:
            try:
                self.abort(upid)  # sets the flag unless it never landed or has ended
            except NotFound:
                return
            except Unavailable:
                if attempt < VOID_ATTEMPTS:
                    self.clock.call_later(VOID_RETRY_SECONDS, lambda: abort_late(attempt + 1))

        self.clock.call_later(VOID_RETRY_SECONDS, abort_late)

    def prepare(
        self,
        *,
        node: str,
        type: str,
        id: str,
        user: str,
        args: dict[str, Any] | None = None,
        serial: str | None = None,
        notes: list[str] | None = None,
    ) -> tuple[str, str, dict[str, Any]]:
        """(UPID, key, record) of a queued task, for a caller that writes it in a
        transaction of its own (a backup job claims its run and queues it at once)."""
        notes = [*(notes or ()), *ignored_notes()]
        upid = Upid.new(node, type, id, user, clock=self.clock)
        record = {
            **upid.fields(),
            "status": "queued",
            "args": args or {},
            "serial": serial,
            "abort": False,
        }
        if notes:
            record["notes"] = list(notes)
        return str(upid), record_key(node, str(upid)), record

    def settle(self, upid: str, timeout: float = SETTLE_SECONDS) -> bool:
        """Wait up to `timeout` s for a task this process submitted to its own node to
        end: for its handler to return, its outcome known. Its end is being
        written then, and a status read waits for that write (get), so the
        caller's answer and the client's next poll overlap the write. True when it
        has ended. Returns at once (False) for any other task, or when the node
        was busy as it was submitted: a wait would then mostly time out."""
        node = upid.split(":", 2)[1] if upid.startswith("UPID:") else ""
        worker = local_worker(self.store, node)
        if worker is None:
            return False
        return worker.wait_decided(upid, timeout)

    def get(self, upid: str) -> dict[str, Any]:
        parsed = Upid.parse(upid)
        worker = local_worker(self.store, parsed.node)
        if worker is not None:
            # A task whose end is being written reads ended once it is (bounded: a
            # slow store answers "running" after SETTLE_SECONDS, as before).
            worker.wait_written(upid, SETTLE_SECONDS)
            known = worker.known_record(upid)
            if known is not None:
                # Its own worker's: an ended task's record never changes, and only this
                # worker changes a running one's status and progress. No etcd read.
                return known
        kv = self.store.get(record_key(parsed.node, upid))
        if kv is None:
            raise NotFound(f"no such task '{upid}'")
        return kv.value

    def status(self, upid: str) -> dict[str, Any]:
        rec = self.get(upid)
        out = {
            k: rec[k] for k in ("upid", "node", "pid", "pstart", "starttime", "type", "id", "user")
        }
        out["status"] = "stopped" if rec["status"] == "stopped" else "running"
        if rec["status"] == "stopped":
            out["exitstatus"] = rec.get("exitstatus", "unknown")
            out["endtime"] = rec.get("endtime")
        if rec.get("progress") is not None:
            out["progress"] = rec["progress"]
        return out

    def log_lines(self, upid: str) -> list[str]:
        Upid.parse(upid)
        lines: list[str] = []
        for kv in self.store.range(f"tasklog/{quote(upid, safe=':@!')}/"):
            lines.extend(kv.value or [])
        return lines

    def list(self, node: str | None = None) -> list[dict[str, Any]]:
        prefix = f"tasks/{node}/" if node else "tasks/"
        out = []
        for kv in self.store.range(prefix):
            rec = kv.value
            item = {
                k: rec.get(k)
                for k in ("upid", "node", "pid", "pstart", "starttime", "type", "id", "user")
            }
            if rec["status"] == "stopped":
                item["status"] = rec.get("exitstatus")
                item["endtime"] = rec.get("endtime")
            out.append(item)
        out.sort(key=lambda t: (t["starttime"], t["pstart"]), reverse=True)
        return out

    def abort(self, upid: str) -> None:
        parsed = Upid.parse(upid)
        key = record_key(parsed.node, upid)

        def mark(rec: Any) -> Any:
            if rec is None:
                raise NotFound(f"no such task '{upid}'")
            if rec["status"] != "stopped":
                rec["abort"] = True
            return rec

        self.store.update(key, mark)

    def wait(self, upid: str, *, timeout: float = 60.0, poll: float = 0.05) -> dict[str, Any]:
        """Block until the task stops; returns its status. For tests and the CLI."""
        deadline = self.clock.monotonic() + timeout
        while True:
            status = self.status(upid)
            if status["status"] == "stopped":
                return status
            if self.clock.monotonic() > deadline:
                raise TimeoutError(f"task {upid} still running after {timeout:.0f} s")
            self.clock.sleep(poll)
