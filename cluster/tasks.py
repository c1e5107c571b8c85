"""Tasks: every long operation, with a Proxmox UPID, a record and a log in etcd.

The API records a task addressed to the owning node (status "queued") and
answers with its UPID at once. That node's `TaskWorker` watches its queue and
runs the task in a thread pool. Tasks that share a `serial` key (a guest:
"vm:105") run one after another in submission order instead of failing with
a lock timeout, which is how corral avoids Proxmox's "can't lock file"
errors under parallel automation. Different keys run in parallel.

Keys:
  tasks/{node}/{upid}        the record (Proxmox's task fields + args, abort)
  tasklog/{upid}/{chunk}     log lines, a JSON list per chunk

Submitting and reading tasks, from any node: task_client.Tasks.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import traceback
from collections import deque
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from corral.cluster import metrics_core
from corral.cluster.clock import REAL, Clock
from corral.cluster.errors import Conflict, CorralError, ParamError, Unavailable
from corral.cluster.store_api import Event, StoreAPI

log = logging.getLogger(__name__)

Handler = Callable[["TaskContext", dict[str, Any]], Any]
HANDLERS: dict[str, Handler] = {}
RECOVERERS: dict[str, Handler] = {}
# Task types whose handler may begin while its record's put is still in flight
# (see Tasks.submit): it reads and prepares, and calls TaskContext.recorded()
# before its first change.
EARLY: set[str] = set()
INTERRUPTED = "interrupted by node restart"
ABORTED = "aborted by user"
VOIDED = "not run: its submission failed (the API answered 503)"
# Test-only (tests/faults): a task that logs a line containing this text stops
# there for PAUSE_SECONDS, its log flushed, so a test can kill a process at a
# known step of a real operation ("task TYPE": right after a task of that type
# is claimed, before its handler). Unset in production; read once at import.
PAUSE_AT = os.environ.get("CORRAL_TEST_PAUSE_AT", "")
PAUSE_SECONDS = float(os.environ.get("CORRAL_TEST_PAUSE_SECONDS") or 120)
# A task begun before its record landed waits at most this long for its submitter's
# put (which has a timeout of its own and always reports).
RECORD_WAIT_SECONDS = 120.0
# Each node's running TaskWorker in this process, by (store, node): a task
# submitted here for this node is handed to it at once (see TaskWorker.offer).
_LOCAL: dict[tuple[int, str], TaskWorker] = {}


def task_handler(task_type: str, *, early: bool = False) -> Callable[[Handler], Handler]:
    """Register the function that runs tasks of `task_type` on their node. `early`:
    it may begin before its record is durable, and calls TaskContext.recorded()
    before it changes anything (its preparation then overlaps the record's put)."""

    def register(fn: Handler) -> Handler:
        HANDLERS[task_type] = fn
        if early:
            EARLY.add(task_type)
        else:
            EARLY.discard(task_type)
        return fn

    return register


def task_recovery(task_type: str) -> Callable[[Handler], Handler]:
    """Register what a node runs, at its restart, for a task of `task_type` that was
    running when the node died: undo or finish what the task left half-made.
    It gets the interrupted task's context (its lines go to that task's log)."""

    def register(fn: Handler) -> Handler:
        RECOVERERS[task_type] = fn
        return fn

    return register


# -- UPIDs -------------------------------------------------------------------


def _process_start_ticks() -> int:
    try:
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


_PSTART = _process_start_ticks()
_SEQ = itertools.count()


@dataclass(frozen=True)
class Upid:
    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str

    def __str__(self) -> str:
        return (
            f"UPID:{self.node}:{self.pid:08X}:{self.pstart:08X}:{self.starttime:08X}:"
            f"{self.type}:{self.id}:{self.user}:"
        )

    @classmethod
    def new(
        cls, node: str, task_type: str, task_id: str, user: str, *, clock: Clock = REAL
    ) -> Upid:
        # One daemon runs many tasks at once; pstart carries a sequence number
        # so two tasks started in one second still get distinct UPIDs.
        return cls(
            node, os.getpid(), _PSTART + next(_SEQ), int(clock.time()), task_type, task_id, user
        )

    @classmethod
    def parse(cls, text: str) -> Upid:
        parts = text.split(":")
        if len(parts) != 9 or parts[0] != "UPID" or parts[8] != "":
            raise ParamError.one("upid", "unable to parse worker upid")
        try:
            return cls(
                parts[1],
                int(parts[2], 16),
                int(parts[3], 16),
                int(parts[4], 16),
                parts[5],
                parts[6],
                parts[7],
            )
        except ValueError:
            raise ParamError.one("upid", "unable to parse worker upid") from None

    def fields(self) -> dict[str, Any]:
        return {
            "upid": str(self),
            "node": self.node,
            "pid": self.pid,
            "pstart": self.pstart,
            "starttime": self.starttime,
            "type": self.type,
            "id": self.id,
            "user": self.user,
        }


def record_key(node: str, upid: str) -> str:
    # UPIDs contain ':' and '@', fine in etcd keys; quote '/' defensively.
    return f"tasks/{node}/{quote(upid, safe=':@!')}"


def local_worker(store: StoreAPI, node: str) -> TaskWorker | None:
    """This process's running worker for `node` on `store`, if any."""
    worker = _LOCAL.get((id(store), node))
    if worker is None or worker.store is not store or worker.stopped:
        return None
    return worker


# -- running -------------------------------------------------------------------


class TaskAborted(CorralError):
    status = 500
    msg_fmt = ABORTED


class TaskVoided(Exception):
    """The task's record could not be written (its submitter answered 503): it must
    change nothing. Raised by TaskContext.recorded() in a task begun early. Not a
    CorralError, so a handler's own error handling does not take it for a failure."""


class _Landing:
    """The put of a reserved task's record, in flight as the task begins (Tasks.submit)."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        self.done = threading.Event()
        self.revision = 0  # 0 once done: the put failed

    def landed(self, revision: int) -> None:
        self.revision = revision
        self.done.set()

    def failed(self) -> None:
        self.done.set()


class TaskContext:
    """What a handler sees: the log, progress, abort flag, who asked."""

    FLUSH_SECONDS = 0.2

    def __init__(self, worker: TaskWorker, record: dict[str, Any]) -> None:
        self.worker = worker
        self.store = worker.store
        self.clock = worker.clock
        self.record = record
        self.upid: str = record["upid"]
        self.user: str = record["user"]
        self.node: str = record["node"]
        self.aborted = threading.Event()
        # Writes that go into the transaction recording the task's end (begin() gives
        # the ops, end(written) follows; guest_status.StatusAtEnd).
        self.end_writes: list[Any] = []
        self._buffer: list[str] = []
        self._chunk = 0
        # Short tasks write their log once, with their end (see TaskWorker._finish).
        self._last_flush = self.clock.monotonic()
        self._lock = threading.Lock()

    def log(self, line: str) -> None:
        with self._lock:
            self._buffer.extend(str(line).splitlines() or [""])
            if (
                len(self._buffer) >= 100
                or self.clock.monotonic() - self._last_flush > self.FLUSH_SECONDS
            ):
                self._flush_locked()
        if PAUSE_AT and PAUSE_AT in str(line):
            with contextlib.suppress(TaskVoided):
                self.recorded()
            self.flush()
            self.clock.sleep(PAUSE_SECONDS)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def recorded(self) -> None:
        """Return once the task's record is durable. A handler registered `early`
        calls this before its first change; TaskVoided when the record could not
        be written (the handler must then change nothing)."""
        self.worker.await_record(self.upid)

    def _flush_locked(self) -> None:
        op = self._chunk_op()
        if op is None or not self.worker.record_landed(self.upid):
            return  # no log without its task's record: kept for the next flush
        try:
            self.store.put(op[1], op[2])
        except Unavailable:
            return  # keep the lines; the next flush retries
        self._flushed()

    def _chunk_op(self) -> tuple[str, str, list[str]] | None:
        """The write that would store the buffered lines (None when there are none)."""
        if not self._buffer:
            return None
        return ("put", f"tasklog/{quote(self.upid, safe=':@!')}/{self._chunk:06d}", self._buffer)

    def _flushed(self) -> None:
        self._chunk += 1
        self._buffer = []
        self._last_flush = self.clock.monotonic()

    def progress(self, fraction: float) -> None:
        self.worker.set_fields(self.record, progress=round(max(0.0, min(1.0, fraction)), 3))

    def check_abort(self) -> None:
        if self.aborted.is_set():
            raise TaskAborted()


class TaskWorker:
    """Runs the tasks addressed to one node."""

    # A task's write waits this many times 0.5 s through an etcd restart in line;
    # a task's end that still could not be written is retried every END_RETRY_SECONDS.
    WRITE_ATTEMPTS = 50
    END_RETRY_SECONDS = 2.0

    def __init__(self, store: StoreAPI, node: str, *, workers: int = 8) -> None:
        self.store = store
        self.clock = store.clock
        self.node = node
        self.pool = self.clock.executor(workers, name="task")
        self._lock = threading.Lock()
        self._queues: dict[str, deque[dict[str, Any]]] = {}
        self._running: dict[str, TaskContext] = {}
        self._seen: set[str] = set()
        self._revisions: dict[str, int] = {}  # upid -> record revision when queued
        # upid -> (mod revision, value) of the record as this worker last wrote it
        # while the task runs (claim, progress): the task's end needs no read first.
        self._written: dict[str, tuple[int, dict[str, Any]]] = {}
        self._workers = workers
        # upid -> set when that task's handler has returned, for tasks reserved while
        # the node was quiet; Tasks.settle waits on them. Bounded: unwaited ones are
        # dropped.
        self._decided: dict[str, threading.Event] = {}
        # upid -> set once the end of a task whose handler returned is written and its
        # queue has moved on; Tasks.get waits on it (see Tasks.settle).
        self._ending: dict[str, threading.Event] = {}
        # upid -> the record put of a reserved task begun before it landed; and the
        # records of such tasks that landed after their put was reported failed.
        self._landing: dict[str, _Landing] = {}
        self._late: dict[str, dict[str, Any]] = {}
        # upid -> serial key of tasks reserved to run at once (see reserve), and the
        # recorded-as-running ones among them not yet begun (an abort seen meanwhile
        # goes to _early_abort).
        self._reserved: dict[str, str] = {}
        self._claimed: set[str] = set()
        self._early_abort: set[str] = set()
        # Queued tasks whose claim failed with etcd unreachable, to be claimed again
        # (_requeue): their claim may have landed all the same.
        self._unclaimed: set[str] = set()
        # The last records of tasks this worker ended, and the record of each task it
        # runs as last written (Tasks.get answers from these: a status poll of a task
        # of this node reads no etcd, so it still answers while etcd is slow).
        self._finished: dict[str, dict[str, Any]] = {}
        self._live: dict[str, dict[str, Any]] = {}
        # Tasks whose submitter's record put failed with an unknown outcome (the API
        # answered 503): should the put land late, the task is ended unrun (see void).
        self._void: dict[str, None] = {}
        # upid -> the record as the watch delivered it (None: not yet), for tasks of this
        # node whose submitter's put is in flight in this process. Held, not run: if
        # the put is then reported failed, the record had landed all the same and is
        # ended unrun (void); else the submitter queues it (offer, await_record).
        self._inflight: dict[str, dict[str, Any] | None] = {}
        self.stopped = False
        self._watch: Any = None
        self.context: MutableMapping[str, Any] = {}  # the node's services (NodeServices)

    def start(self) -> None:
        kvs, revision = self.store.range_rev(f"tasks/{self.node}/")
        kvs.sort(key=lambda kv: kv.create_revision)
        for kv in kvs:
            rec = kv.value
            if rec["status"] == "running":
                # This node restarted while the task ran: it will never finish.
                self._recover(rec)
            elif rec["status"] == "queued":
                self._accept(rec, kv.mod_revision)
        self._watch = self.store.watch(
            f"tasks/{self.node}/", self._on_event, start_revision=revision
        )
        _LOCAL[(id(self.store), self.node)] = self

    def _recover(self, rec: dict[str, Any], exitstatus: str = INTERRUPTED) -> None:
        """End a task that will not run its handler — this node died while it ran
        (INTERRUPTED), or it was aborted while queued (ABORTED) — after its
        recovery step (if its type has one) has undone what the API's side left
        (a create's record locked "create") or the task half-made."""
        ctx = TaskContext(self, rec)
        ctx._chunk = len(self.store.range(f"tasklog/{quote(ctx.upid, safe=':@!')}/"))
        if exitstatus == INTERRUPTED:
            ctx.log("node restarted while this task ran")
        recover = RECOVERERS.get(rec["type"])
        if recover is not None:
            try:
                recover(ctx, rec.get("args") or {})
            except Exception as err:  # noqa: BLE001 - the task must end all the same
                log.exception("recovery of task %s failed", rec["upid"])
                ctx.log(f"recovery failed: {type(err).__name__}: {err}")
        ctx.log(f"TASK ERROR: {exitstatus}")
        self._finish(rec, exitstatus, ctx)
        self._mark_decided(rec["upid"])

    def stop(self) -> None:
        self.stopped = True
        if _LOCAL.get((id(self.store), self.node)) is self:
            del _LOCAL[(id(self.store), self.node)]
        if self._watch is not None:
            self._watch.cancel()
        for ctx in list(self._running.values()):
            ctx.aborted.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _on_event(self, event: Event) -> None:
        if event.kind == "resync":
            for kv in sorted(event.value, key=lambda kv: kv.create_revision):
                self._on_record(kv.value, kv.mod_revision)
        elif event.kind == "put":
            self._on_record(event.value, event.revision)  # a put's revision is its mod revision

    def _on_record(self, rec: dict[str, Any], revision: int = 0) -> None:
        upid = rec["upid"]
        with self._lock:
            if upid in self._inflight and self._inflight[upid] is None:
                self._inflight[upid] = rec  # its put landed; the submitter not told yet
                return
        if upid in self._void:
            with self._lock:
                self._void.pop(upid, None)
                if upid in self._landing:
                    self._late[upid] = rec  # begun early and still unwinding: it ends it
                    return
                fresh = upid not in self._seen and rec["status"] != "stopped"
                self._seen.add(upid)
            if fresh:
                self._end_void(rec)  # landed after its API call failed: never run
            return
        if rec.get("abort"):
            with self._lock:
                ctx = self._running.get(upid)
                if ctx is None and upid in self._claimed:
                    self._early_abort.add(upid)  # recorded as running, not begun yet
                    return
            if ctx is not None:
                ctx.aborted.set()
            elif rec["status"] == "queued":
                self._drop_queued(upid)
                self._recover(rec, ABORTED)  # never ran: quick (nothing built yet)
            return
        if rec["status"] == "queued":
            self._accept(rec, revision)

    def reserve(self, upid: str, serial: str | None) -> bool:
        """While the node is quiet (nothing queued for the task's guest, a free
        worker), hold the guest's queue for a task this process is about to record:
        tasks for the guest accepted meanwhile wait behind it. The caller records it
        as running, then run_reserved(); or unreserve() when the record failed."""
        with self._lock:
            key = serial or upid
            if self.stopped or key in self._queues or len(self._queues) >= self._workers:
                return False
            self._queues[key] = deque([{"upid": upid, "reserved": True}])
            self._reserved[upid] = key
            self._decided[upid] = threading.Event()  # Tasks.settle waits on it
            while len(self._decided) > 256:  # expected but never waited for
                self._decided.pop(next(iter(self._decided)))
            return True

    def expect(self, upid: str) -> None:
        """This process is about to write the record of task `upid` of this node: the
        watch's copy is held until the put's outcome is known (offer or void)."""
        with self._lock:
            self._expect_locked(upid)

    def _expect_locked(self, upid: str) -> None:
        self._inflight[upid] = None
        while len(self._inflight) > 1024:  # one left behind (its task ended unbegun)
            self._inflight.pop(next(iter(self._inflight)))

    def void(self, upid: str) -> None:
        """The record of task `upid` could not be written (a timeout or a reset
        connection: etcd may still apply the put later). Should it appear, it is
        ended unrun, as VOIDED: its API call answered 503, so it must not happen."""
        with self._lock:
            arrived = self._inflight.pop(upid, None)
            if arrived is None:
                self._void[upid] = None  # should it land later, _on_record ends it
                while len(self._void) > 1024:
                    self._void.pop(next(iter(self._void)))
                return
            if upid in self._landing:
                self._late[upid] = arrived  # begun early: ended as it unwinds
                return
        self._end_void(arrived)  # landed before its put was reported failed: never run

    def _end_void(self, rec: dict[str, Any]) -> None:
        """End a voided task unrun; retried while etcd is still coming back (its
        put has just landed: the watch that delivered it is itself reconnecting)."""
        if self.stopped:
            return  # the node's restart ends it as interrupted
        try:
            self._recover(rec, VOIDED)
        except Unavailable:
            self.clock.call_later(self.END_RETRY_SECONDS, lambda: self._end_void(rec))

    def begin_reserved(self, rec: dict[str, Any]) -> _Landing:
        """Run a reserved task, to be recorded as running: its submitter's put of the
        record is in flight and reports to the returned _Landing (landed or failed).
        Nothing of the task is written, and nothing changes, before it has landed
        (await_record)."""
        upid = rec["upid"]
        landing = _Landing(rec)
        with self._lock:
            key = self._reserved.pop(upid)
            self._landing[upid] = landing
            self._expect_locked(upid)
            self._seen.add(upid)
            self._claimed.add(upid)
            self._live[upid] = rec
            self._queues[key][0] = rec
        self.pool.submit(self._run_serial, key)
        return landing

    def record_landed(self, upid: str) -> bool:
        """False while the record of task `upid` is in flight or could not be written."""
        with self._lock:
            return upid not in self._landing

    def await_record(self, upid: str) -> None:
        """Wait for the put of a task begun before its record landed; TaskVoided when
        it failed. Returns at once for any other task."""
        with self._lock:
            landing = self._landing.get(upid)
        if landing is None:
            return
        # The submitter reports either way, within its put's own timeout.
        if not self.clock.wait(landing.done, RECORD_WAIT_SECONDS) or not landing.revision:
            raise TaskVoided()
        with self._lock:
            self._inflight.pop(upid, None)
            if self._landing.pop(upid, None) is not None:
                # The record as written, at its revision: the task's end needs no read.
                self._written[upid] = (landing.revision, landing.record)

    def known_record(self, upid: str) -> dict[str, Any] | None:
        """A copy of task `upid`'s record as this worker last wrote it: running (its
        claim, its progress) or ended. None for a task it does not run or keep."""
        with self._lock:
            rec = self._finished.get(upid) or self._live.get(upid)
        return None if rec is None else orjson.loads(orjson.dumps(rec))

    def offer(self, rec: dict[str, Any], revision: int) -> None:
        """A task this process has just recorded for this node, at `revision`: queue
        it now rather than when the watch delivers the put (one hop less; the watch
        event that follows is ignored as already seen)."""
        with self._lock:
            self._inflight.pop(rec["upid"], None)
        self._accept(rec, revision)

    def wait_decided(self, upid: str, timeout: float) -> bool:
        """Wait until the handler of a task reserved while the node was quiet (see
        reserve) has returned."""
        with self._lock:
            decided = self._decided.get(upid)
        if decided is None:
            return False
        try:
            return self.clock.wait(decided, timeout)
        finally:
            with self._lock:
                self._decided.pop(upid, None)

    def _mark_decided(self, upid: str) -> None:
        with self._lock:
            decided = self._decided.get(upid)
        if decided is not None:
            decided.set()

    def wait_written(self, upid: str, timeout: float) -> None:
        """Wait (at most `timeout` s) for the end of task `upid` to be written when
        its handler has returned and the write is under way."""
        with self._lock:
            ending = self._ending.get(upid)
        if ending is not None:
            self.clock.wait(ending, timeout)

    def _accept(self, rec: dict[str, Any], revision: int = 0) -> None:
        """Queue a task; `revision` is its record's mod revision as seen (0: unknown)."""
        with self._lock:
            if rec["upid"] in self._seen:
                return
            self._seen.add(rec["upid"])
            self._revisions[rec["upid"]] = revision
            key = rec.get("serial") or rec["upid"]
            q = self._queues.setdefault(key, deque())
            q.append(rec)
            if len(q) == 1:
                self.pool.submit(self._run_serial, key)

    def _drop_queued(self, upid: str) -> None:
        with self._lock:
            for q in self._queues.values():
                for rec in list(q)[1:]:  # the head is running
                    if rec["upid"] == upid:
                        q.remove(rec)

    def _run_serial(self, key: str) -> None:
        while True:
            with self._lock:
                q = self._queues.get(key)
                if not q:
                    self._queues.pop(key, None)
                    return
                rec = q[0]
            try:
                self._run_one(rec)
            except Exception:  # noqa: BLE001 - the next task of this guest must still run
                log.exception("task %s could not be run", rec["upid"])
            finally:
                self._mark_decided(rec["upid"])  # also when it ended before its handler
            with self._lock:
                q.popleft()
                last = not q
                if last:
                    self._queues.pop(key, None)
                # Its end is written and the guest's queue has moved on: a status read
                # waiting for the end answers now, and a next task sent on that
                # answer finds the queue as it will stay.
                ending = self._ending.pop(rec["upid"], None)
            if ending is not None:
                ending.set()
            if last:
                return

    def _run_one(self, rec: dict[str, Any]) -> None:
        ctx = TaskContext(self, rec)
        key = record_key(self.node, rec["upid"])
        with self._lock:
            revision = self._revisions.pop(rec["upid"], 0)
            claimed = rec["upid"] in self._claimed  # recorded as running by its submitter
            self._claimed.discard(rec["upid"])
            early_abort = rec["upid"] in self._early_abort
            self._early_abort.discard(rec["upid"])
            if not early_abort:
                self._running[rec["upid"]] = ctx  # an abort seen from now reaches the handler
        if early_abort:  # aborted before it began: its handler never runs
            self._recover(rec, ABORTED)
            return
        # Claim it with one compare-and-swap on the revision it was queued at; only
        # when the record changed since (an abort, a restart) is it read again.
        if not claimed:
            try:
                if not self._claim_queued(key, rec, revision):
                    return
            except Unavailable as err:
                # etcd went away as the task was claimed: it has not begun. It is
                # claimed again once etcd answers (its watch would not offer it again).
                self._forget_unbegun(rec["upid"], retry=True)
                log.warning("task %s: not begun, claiming it again in %.0f s: %s",
                            rec["upid"], self.END_RETRY_SECONDS, err)  # fmt: skip
                self.clock.call_later(self.END_RETRY_SECONDS, lambda: self._requeue(rec))
                return
        if PAUSE_AT and PAUSE_AT == f"task {rec['type']}":
            with contextlib.suppress(TaskVoided):
                ctx.recorded()
            self.clock.sleep(PAUSE_SECONDS)  # test-only: claimed, its handler not yet begun
        exitstatus = "OK"
        started = self.clock.monotonic()
        metrics_core.task_running(1)
        for line in rec.get("notes") or ():
            ctx.log(line)
        try:
            handler = HANDLERS.get(rec["type"])
            if rec["type"] not in EARLY:
                ctx.recorded()
            if handler is None:
                raise CorralError(f"no handler for task type '{rec['type']}'")
            handler(ctx, rec.get("args") or {})
        except TaskVoided:
            exitstatus = VOIDED
        except TaskAborted:
            exitstatus = ABORTED
        except CorralError as err:
            exitstatus = str(err) or type(err).__name__
        except Exception as err:  # noqa: BLE001 - the task log keeps the trace, not the API
            exitstatus = f"{type(err).__name__}: {err}"
            for line in traceback.format_exc().splitlines():
                ctx.log(line)
            log.exception("task %s failed", rec["upid"])
        finally:
            self._running.pop(rec["upid"], None)
            metrics_core.task_running(-1)
            metrics_core.record_task(rec["type"], exitstatus, self.clock.monotonic() - started)
        try:
            ctx.recorded()  # an early handler that failed before it asked
        except TaskVoided:
            self._drop_voided(rec)
            return
        ctx.log("TASK OK" if exitstatus == "OK" else f"TASK ERROR: {exitstatus}")
        with self._lock:
            # Before settle's waiter is woken: a status read from now on waits for
            # the end being written (Tasks.get).
            self._ending[rec["upid"]] = threading.Event()
        self._mark_decided(rec["upid"])
        self._finish(rec, exitstatus, ctx)

    def _drop_voided(self, rec: dict[str, Any]) -> None:
        """Forget a task begun early whose record could not be written: it changed
        nothing and writes nothing. Should its put land after all, the watch
        delivers it as unseen and void (see void) ends it unrun."""
        upid = rec["upid"]
        with self._lock:
            self._landing.pop(upid, None)
            self._inflight.pop(upid, None)
            self._seen.discard(upid)
            self._live.pop(upid, None)
            self._written.pop(upid, None)
            late = self._late.pop(upid, None)
        if late is not None and late["status"] != "stopped":
            self._end_void(late)

    def set_fields(
        self, rec: dict[str, Any], ctx: TaskContext | None = None, **fields: Any
    ) -> bool:
        """Change fields of the task's record; with `ctx`, its unwritten log lines
        go in the same transaction (a short task's log and end cost one write).
        False when the store stayed unavailable through every attempt."""
        key = record_key(self.node, rec["upid"])
        unavailable: Unavailable | None = None
        for _ in range(self.WRITE_ATTEMPTS):
            try:
                if self._write_fields(key, rec, ctx, fields):
                    return True
                unavailable = None
            except Unavailable as err:
                unavailable = err
                if self.stopped:
                    break  # the node is shutting down: its restart marks the task interrupted
                self.clock.sleep(0.5)  # etcd is restarting; the task's outcome must not be lost
        if unavailable is not None:
            log.warning("task %s: record not updated: %s", rec["upid"], unavailable)
            return False
        raise Conflict(f"too much contention on {key}")

    def _claim_queued(self, key: str, rec: dict[str, Any], revision: int) -> bool:
        """Mark a queued task running; False when it must not run (aborted, gone)."""
        if revision and not rec.get("abort") and self._claim(key, rec, revision):
            return True
        current = self.store.get_value(key)
        with self._lock:
            retried = rec["upid"] in self._unclaimed
        if retried and current is not None and current.get("status") == "running":
            # The claim that failed had landed after all (only this worker claims
            # its node's tasks): it is this worker's to run, unless aborted since.
            if not current.get("abort"):
                with self._lock:
                    self._unclaimed.discard(rec["upid"])
                return True
            self._forget_unbegun(rec["upid"])
            self._recover(current, ABORTED)
            return False
        if current is None or current.get("status") != "queued" or current.get("abort"):
            self._forget_unbegun(rec["upid"])
            if current is not None and current.get("status") == "queued":
                self._recover(current, ABORTED)
            return False
        if not self.set_fields(rec, status="running"):
            raise Unavailable("its record could not be marked running")
        with self._lock:
            self._unclaimed.discard(rec["upid"])
        return True

    def _forget_unbegun(self, upid: str, *, retry: bool = False) -> None:
        """A task that will not begin now: out of the running ones; `retry`: its
        claim is to be made again (_requeue), and may have landed meanwhile."""
        with self._lock:
            self._running.pop(upid, None)
            self._live.pop(upid, None)
            if retry:
                self._unclaimed.add(upid)
            else:
                self._unclaimed.discard(upid)

    def _requeue(self, rec: dict[str, Any]) -> None:
        """Queue again a task whose claim failed with etcd unreachable (see _run_one)."""
        with self._lock:
            if self.stopped:
                return  # the node's restart finds it queued, or running and interrupted
            self._seen.discard(rec["upid"])
        self._accept(rec, 0)  # revision unknown: read first

    def _claim(self, key: str, rec: dict[str, Any], revision: int) -> bool:
        """Compare-and-swap queued -> running; remembers what it wrote (_written)."""
        claimed = {**rec, "status": "running"}
        written = self.store.txn_revision([("mod", key, "==", revision)], [("put", key, claimed)])
        if written > 0:
            with self._lock:
                self._written[rec["upid"]] = (written, claimed)
                self._live[rec["upid"]] = claimed
        return written != 0

    def _write_fields(
        self, key: str, rec: dict[str, Any], ctx: TaskContext | None, fields: dict[str, Any]
    ) -> bool:
        self.await_record(rec["upid"])  # a task begun early: after its record
        # The record as this worker last wrote it, at that revision: no read first.
        # Anyone else's change since (an abort) fails the compare; the retry reads.
        with self._lock:
            known = self._written.pop(rec["upid"], None)
        if known is not None:
            revision, current = known
        else:
            kv = self.store.get(key)
            current = rec if kv is None else kv.value
            revision = 0 if kv is None else kv.mod_revision
        new = {**current, **fields}
        ending = ctx.end_writes if ctx is not None and fields.get("status") == "stopped" else []
        with ctx._lock if ctx is not None else contextlib.nullcontext():
            chunk = None if ctx is None else ctx._chunk_op()
            ops: list[tuple[Any, ...]] = [("put", key, new)]
            if chunk is not None:
                ops.append(chunk)
            begun: list[Any] = []
            written = 0
            try:
                for extra in ending:
                    ops.extend(extra.begin())
                    begun.append(extra)
                written = self.store.txn_revision([("mod", key, "==", revision)], ops)
            finally:
                for extra in reversed(begun):
                    extra.end(bool(written))
            if not written:
                return False
            if ctx is not None:
                ctx.end_writes = []
            if chunk is not None and ctx is not None:
                ctx._flushed()
        if new.get("status") != "stopped":
            with self._lock:
                self._live[rec["upid"]] = new
                if written > 0:  # its revision known: the next write needs no read
                    self._written[rec["upid"]] = (written, new)
        else:
            with self._lock:
                self._live.pop(rec["upid"], None)
                self._finished[rec["upid"]] = new
                while len(self._finished) > 1024:
                    self._finished.pop(next(iter(self._finished)))
        return True

    def _finish(self, rec: dict[str, Any], exitstatus: str, ctx: TaskContext | None = None) -> None:
        fields = {"status": "stopped", "exitstatus": exitstatus, "endtime": int(self.clock.time())}
        if not self.set_fields(rec, ctx, **fields) and not self.stopped:
            # A long etcd outage: the task must not read "running" until the node
            # restarts, so its end (and last log lines) is written once etcd is back.
            log.warning("task %s: its end is not written yet; retrying in the background",
                        rec["upid"])  # fmt: skip
            self.clock.call_later(self.END_RETRY_SECONDS, lambda: self._retry_end(rec, ctx, fields))

    def _retry_end(
        self, rec: dict[str, Any], ctx: TaskContext | None, fields: dict[str, Any]
    ) -> None:
        if self.stopped:
            return  # the node's restart ends the task as interrupted
        try:
            if self._write_fields(record_key(self.node, rec["upid"]), rec, ctx, fields):
                log.info("task %s: its end is written, the store is back", rec["upid"])
                return
        except Unavailable:
            pass
        self.clock.call_later(self.END_RETRY_SECONDS, lambda: self._retry_end(rec, ctx, fields))
