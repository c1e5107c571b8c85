"""Tasks that a request runs itself, not the node's task worker: console sessions.

Proxmox shows each console as a task (`vncproxy`, `termproxy`): running while the
session is open, OK when it closes. A console can stay open for hours, so it must
not hold one of the worker's few threads; the API writes its record itself,
already "running", on the node that serves the session, and ends it there. Records
and log chunks are the worker's own (`cluster.tasks`), so listing, status, log and
the task panel read them like any other task, and a node that restarts with one
still running marks it "interrupted by node restart" (TaskWorker.start).
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import quote

from corral.cluster.errors import CorralError
from corral.cluster.task_client import Tasks
from corral.cluster.tasks import Upid, record_key

log = logging.getLogger(__name__)


class SessionTask:
    """One running task; `end()` stops it (once; later calls do nothing)."""

    def __init__(self, tasks: Tasks, *, node: str, type: str, id: str, user: str) -> None:
        self.store = tasks.store
        self.clock = tasks.clock
        self.upid = str(Upid.new(node, type, id, user, clock=self.clock))
        self.node = node
        self._chunk = 0
        self._lock = threading.Lock()
        self._ended = False
        self.aborted = False  # stopped through the task (DELETE .../tasks/UPID)
        self.record: dict[str, Any] = {
            **Upid.parse(self.upid).fields(),
            "status": "running",
            "args": {},
            "serial": None,
            "abort": False,
        }

    def begin(self, line: str) -> str:
        """Write the running record and the log's first line; returns the UPID."""
        self.store.txn(
            [],
            [("put", record_key(self.node, self.upid), self.record), self._chunk_op([line])],
        )
        return self.upid

    def _chunk_op(self, lines: list[str]) -> tuple[str, str, list[str]]:
        op = ("put", f"tasklog/{quote(self.upid, safe=':@!')}/{self._chunk:06d}", lines)
        self._chunk += 1
        return op

    def end(self, exitstatus: str = "OK", line: str | None = None) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = True
            lines = [line] if line else []
            lines.append("TASK OK" if exitstatus == "OK" else f"TASK ERROR: {exitstatus}")
            record = {
                **self.record,
                "status": "stopped",
                "exitstatus": exitstatus,
                "endtime": int(self.clock.time()),
            }
            try:
                self.store.txn(
                    [],
                    [("put", record_key(self.node, self.upid), record), self._chunk_op(lines)],
                )
            except CorralError as err:
                # etcd unavailable: the record stays "running" until this node restarts
                # and marks it interrupted; the console itself is already closed.
                log.warning("task %s: end not recorded: %s", self.upid, err)
