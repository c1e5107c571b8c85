"""Tasks: UPIDs, the worker, serial order per guest, abort, logs, restart marking."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from corral.cluster.clock import VirtualClock
from corral.cluster.errors import NotFound, ParamError
from corral.cluster.store_api import StoreAPI
from corral.cluster.store_memory import MemoryStore
from corral.cluster.task_client import Tasks
from corral.cluster.tasks import (
    ABORTED,
    INTERRUPTED,
    TaskContext,
    TaskWorker,
    Upid,
    record_key,
    task_handler,
)
from tests.util import wait_for

ORDER: list[str] = []
GATE = threading.Event()


@task_handler("t_ok")
def _ok(ctx: TaskContext, args: dict[str, Any]) -> None:
    for i in range(args.get("lines", 3)):
        ctx.log(f"line {i}")
    ctx.progress(1.0)


@task_handler("t_fail")
def _fail(ctx: TaskContext, args: dict[str, Any]) -> None:
    ctx.log("about to fail")
    raise ParamError.one("memory", "too small")


@task_handler("t_crash")
def _crash(ctx: TaskContext, args: dict[str, Any]) -> None:
    raise RuntimeError("boom")


@task_handler("t_order")
def _order(ctx: TaskContext, args: dict[str, Any]) -> None:
    ORDER.append(f"start {args['n']}")
    time.sleep(0.05)
    ORDER.append(f"end {args['n']}")


@task_handler("t_wait")
def _wait(ctx: TaskContext, args: dict[str, Any]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ctx.check_abort()
        if GATE.is_set():
            return
        time.sleep(0.02)


@pytest.fixture
def worker(store: StoreAPI) -> Any:
    w = TaskWorker(store, "n1")
    w.start()
    yield w
    w.stop()


def test_upid_format_round_trip() -> None:
    upid = Upid.new("node1", "vzstart", "105", "root@pam")
    text = str(upid)
    parts = text.split(":")
    assert parts[0] == "UPID" and parts[1] == "node1" and text.endswith(":root@pam:")
    assert all(len(p) == 8 for p in parts[2:5])
    assert Upid.parse(text) == upid
    assert str(Upid.new("n", "t", "1", "u")) != str(Upid.new("n", "t", "1", "u"))
    with pytest.raises(ParamError):
        Upid.parse("UPID:bad")


def test_task_runs_and_logs(store: StoreAPI, worker: TaskWorker) -> None:
    tasks = Tasks(store)
    upid = tasks.submit(node="n1", type="t_ok", id="100", user="root@pam", args={"lines": 120})
    status = tasks.wait(upid, timeout=20)
    assert status["exitstatus"] == "OK"
    lines = tasks.log_lines(upid)
    assert lines[0] == "line 0" and lines[119] == "line 119" and lines[-1] == "TASK OK"
    assert tasks.list("n1")[0]["status"] == "OK"


def test_failures_end_with_the_error(store: StoreAPI, worker: TaskWorker) -> None:
    tasks = Tasks(store)
    upid = tasks.submit(node="n1", type="t_fail", id="", user="root@pam")
    assert "Parameter verification failed" in tasks.wait(upid)["exitstatus"]
    crash = tasks.submit(node="n1", type="t_crash", id="", user="root@pam")
    assert tasks.wait(crash)["exitstatus"] == "RuntimeError: boom"
    assert any("Traceback" in line for line in tasks.log_lines(crash))
    unknown = tasks.submit(node="n1", type="no_such_type", id="", user="root@pam")
    assert "no handler" in tasks.wait(unknown)["exitstatus"]


def test_same_serial_runs_in_submission_order(store: StoreAPI, worker: TaskWorker) -> None:
    ORDER.clear()
    tasks = Tasks(store)
    upids = [
        tasks.submit(
            node="n1", type="t_order", id="105", user="u@pve", args={"n": i}, serial="vm:105"
        )
        for i in range(5)
    ]
    for upid in upids:
        assert tasks.wait(upid)["exitstatus"] == "OK"
    expected = [x for i in range(5) for x in (f"start {i}", f"end {i}")]
    assert ORDER == expected


def test_other_serials_run_in_parallel(store: StoreAPI, worker: TaskWorker) -> None:
    GATE.clear()
    tasks = Tasks(store)
    first = tasks.submit(node="n1", type="t_wait", id="1", user="u@pve", serial="vm:1")
    second = tasks.submit(node="n1", type="t_ok", id="2", user="u@pve", serial="vm:2")
    assert tasks.wait(second)["exitstatus"] == "OK"  # not blocked behind vm:1
    GATE.set()
    assert tasks.wait(first)["exitstatus"] == "OK"


def test_abort_running_and_queued(store: StoreAPI, worker: TaskWorker) -> None:
    GATE.clear()
    tasks = Tasks(store)
    running = tasks.submit(node="n1", type="t_wait", id="9", user="u@pve", serial="vm:9")
    queued = tasks.submit(node="n1", type="t_ok", id="9", user="u@pve", serial="vm:9")
    wait_for(
        lambda: (
            tasks.status(running)["status"] == "running"
            and store.get_value(record_key("n1", running))["status"] == "running"
        ),
        10,
    )
    tasks.abort(queued)
    tasks.abort(running)
    assert tasks.wait(running)["exitstatus"] == ABORTED
    assert tasks.wait(queued)["exitstatus"] == ABORTED
    assert "line 0" not in tasks.log_lines(queued)


def test_restarted_node_marks_running_tasks_interrupted(store: StoreAPI) -> None:
    tasks = Tasks(store)
    upid = tasks.submit(node="n2", type="t_ok", id="", user="u@pve")
    key = record_key("n2", upid)
    store.update(key, lambda r: {**r, "status": "running"})  # as if the node died mid-task
    queued = tasks.submit(node="n2", type="t_ok", id="", user="u@pve")
    w = TaskWorker(store, "n2")
    w.start()
    try:
        assert tasks.wait(upid)["exitstatus"] == INTERRUPTED
        assert tasks.wait(queued)["exitstatus"] == "OK"  # never started: runs after restart
    finally:
        w.stop()


def test_unknown_task(store: StoreAPI) -> None:
    with pytest.raises(NotFound):
        Tasks(store).get(str(Upid.new("n1", "x", "", "u@pve")))


def test_virtual_clock_worker_writes_little_and_honours_an_early_abort() -> None:
    """On the in-memory store and a virtual clock: no thread, no sleep, exact write counts."""
    clock = VirtualClock()
    mem = MemoryStore(clock=clock)
    worker = TaskWorker(mem, "n1")
    worker.start()
    tasks = Tasks(mem)
    before = mem.revision()
    upid = tasks.submit(node="n1", type="t_ok", id="1", user="u@pve", args={"lines": 3})
    assert clock.run_until(lambda: tasks.status(upid)["status"] == "stopped")
    assert tasks.log_lines(upid) == ["line 0", "line 1", "line 2", "TASK OK"]
    # Submitted as running (the node's own worker was quiet: no claim), progress, then
    # its end and log together.
    assert mem.revision() - before == 3
    assert tasks.status(upid)["endtime"] == int(clock.time())

    early = tasks.submit(node="n1", type="t_ok", id="2", user="u@pve")
    tasks.abort(early)  # before the worker ran it: its handler never runs
    assert clock.run_until(lambda: tasks.status(early)["status"] == "stopped")
    assert tasks.status(early)["exitstatus"] == ABORTED
    assert "line 0" not in tasks.log_lines(early)
    worker.stop()
    assert clock.errors == []


RUNS: list[str] = []


@task_handler("t_count")
def _count(ctx: TaskContext, args: dict[str, Any]) -> None:
    RUNS.append(ctx.upid)


def test_local_submit_runs_once_and_settle_waits_for_the_end(
    store: StoreAPI, worker: TaskWorker
) -> None:
    """A task submitted in the worker's own process is handed to it at once (and its
    watch event ignored: it runs once); settle() returns when it has ended."""
    RUNS.clear()
    tasks = Tasks(store)
    upids = [
        tasks.submit(node="n1", type="t_count", id=str(i), user="u@pve", serial=f"vm:{i}")
        for i in range(3)
    ]
    assert tasks.settle(upids[0], 20) is True  # quiet node, nothing queued before it
    assert tasks.status(upids[0])["exitstatus"] == "OK"
    assert tasks.settle(upids[0], 0.01) is False  # waited for once: nothing kept
    for upid in upids:
        assert tasks.wait(upid)["exitstatus"] == "OK"
    time.sleep(0.2)  # the watch events of all three have arrived by now
    assert sorted(RUNS) == sorted(upids)
    # Another node's task, or a UPID this process never submitted: no wait at all.
    other = tasks.submit(node="n2", type="t_count", id="9", user="u@pve")
    assert tasks.settle(other, 20) is False
    assert tasks.status(other)["status"] == "running"  # n2 has no worker here


def test_settle_is_bounded_and_skipped_behind_a_busy_guest(
    store: StoreAPI, worker: TaskWorker
) -> None:
    GATE.clear()
    tasks = Tasks(store)
    slow = tasks.submit(node="n1", type="t_wait", id="7", user="u@pve", serial="vm:7")
    assert tasks.settle(slow, 0.05) is False  # bounded: the task still runs
    assert tasks.status(slow)["status"] == "running"
    behind = tasks.submit(node="n1", type="t_ok", id="7", user="u@pve", serial="vm:7")
    # Queued behind the slow task: settle does not wait (it would only time out),
    # even though the slow task ends meanwhile.
    threading.Timer(0.3, GATE.set).start()
    assert tasks.settle(behind, 20) is False
    assert tasks.wait(behind)["exitstatus"] == "OK"
    assert tasks.wait(slow)["exitstatus"] == "OK"


def test_a_running_task_writes_its_record_without_reading_it(
    store: StoreAPI, worker: TaskWorker
) -> None:
    """Claim, progress and end: each write knows the revision of the one before, so
    the worker reads the record only when someone else changed it (an abort)."""
    reads: list[str] = []
    real_get = store.get

    def counting_get(key: str) -> Any:
        if threading.current_thread().name.startswith("task"):
            reads.append(key)
        return real_get(key)

    store.get = counting_get  # type: ignore[method-assign]
    try:
        tasks = Tasks(store)
        upid = tasks.submit(node="n1", type="t_ok", id="5", user="u@pve", args={"lines": 2})
        status = tasks.wait(upid)
        assert status["exitstatus"] == "OK" and status.get("progress") == 1.0
        assert tasks.log_lines(upid) == ["line 0", "line 1", "TASK OK"]
        assert [k for k in reads if k.startswith("tasks/")] == []
    finally:
        del store.get


PROGRESS_GATE = threading.Event()


@task_handler("t_half")
def _half(ctx: TaskContext, args: dict[str, Any]) -> None:
    ctx.progress(0.5)
    assert PROGRESS_GATE.wait(20)


def test_status_of_the_nodes_own_task_reads_no_etcd(store: StoreAPI, worker: TaskWorker) -> None:
    """A status poll of a task this node's worker runs or ended is answered from the
    worker's memory: while etcd stalls (a restore's disk load delays its fsyncs for
    seconds), the poll still answers, with the progress as last written. Another
    node's task, or one still queued, is read from etcd as before."""
    from corral.cluster.errors import Unavailable

    PROGRESS_GATE.clear()
    tasks = Tasks(store)
    upid = tasks.submit(node="n1", type="t_half", id="8", user="u@pve", serial="vm:8")
    queued = tasks.submit(node="n1", type="t_ok", id="8", user="u@pve", serial="vm:8")
    other = tasks.submit(node="n2", type="t_ok", id="9", user="u@pve")
    wait_for(lambda: tasks.status(upid).get("progress") == 0.5, timeout=10)

    def stalled(key: str) -> Any:
        raise Unavailable("etcd did not answer within 3.0 s")

    store.get = stalled  # type: ignore[method-assign]
    try:
        status = tasks.status(upid)
        assert (status["status"], status["progress"], status["user"]) == ("running", 0.5, "u@pve")
        for etcd_only in (queued, other):
            with pytest.raises(Unavailable):
                tasks.status(etcd_only)
        PROGRESS_GATE.set()
        wait_for(lambda: tasks.status(upid)["status"] == "stopped", timeout=10)
        assert tasks.status(upid)["exitstatus"] == "OK"
    finally:
        PROGRESS_GATE.set()
        del store.get
    assert tasks.wait(queued)["exitstatus"] == "OK"


def test_a_task_whose_record_put_failed_never_runs_when_the_put_lands_late(
    store: StoreAPI, worker: TaskWorker
) -> None:
    """A frozen etcd may apply a put after the caller gave up on it (a timeout, a
    reset connection): the API answered 503, so the task must not happen. Its own
    node's worker ends it unrun (VOIDED); another node's task gets its abort flag."""
    from corral.cluster.errors import Unavailable
    from corral.cluster.tasks import VOIDED

    RUNS.clear()
    GATE.clear()
    tasks = Tasks(store)
    real_put = store.put
    late: list[threading.Timer] = []

    def put_lands_late(key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("tasks/") and value.get("type") == "t_count":
            timer = threading.Timer(0.2, lambda: real_put(key, value, *args, **kwargs))
            late.append(timer)
            timer.start()
            raise Unavailable("connection to etcd was reset")
        return real_put(key, value, *args, **kwargs)

    busy = tasks.submit(node="n1", type="t_wait", id="6", user="u@pve", serial="vm:6")
    store.put = put_lands_late  # type: ignore[method-assign]
    try:
        # quiet guest: recorded as running at once; busy guest: queued behind `busy`;
        # another node's task
        for node, serial in (("n1", "vm:61"), ("n1", "vm:6"), ("n2", "vm:62")):
            with pytest.raises(Unavailable):
                tasks.submit(node=node, type="t_count", id="6", user="u@pve", serial=serial)
        for timer in late:
            timer.join()
    finally:
        del store.put
    ours = [kv.value for kv in store.range("tasks/n1/") if kv.value["type"] == "t_count"]
    assert len(ours) == 2
    for rec in ours:
        assert tasks.wait(rec["upid"], timeout=10)["exitstatus"] == VOIDED
    GATE.set()
    assert tasks.wait(busy)["exitstatus"] == "OK"
    assert RUNS == []  # neither ran
    (other,) = [kv for kv in store.range("tasks/n2/")]
    wait_for(lambda: store.get_value(other.key)["abort"] is True, timeout=10)


@pytest.mark.parametrize(
    ("landed", "aborted"),
    [(False, False), (True, False), (False, True), (True, True)],
    ids=["claim-lost", "claim-landed", "lost-then-aborted", "landed-then-aborted"],
)
def test_a_queued_task_whose_claim_failed_runs_once_etcd_answers(
    store: StoreAPI, worker: TaskWorker, landed: bool, aborted: bool
) -> None:
    """etcd went away just as a queued task was claimed (a soak with kill -9 of etcd
    logged "could not be run"): the worker forgot the task, which stayed queued for
    good and its guest's API said nothing. It is now claimed again once etcd
    answers, and runs once, whether the failed claim was lost or had landed; an
    abort meanwhile ends it unrun."""
    from corral.cluster.errors import Unavailable

    RUNS.clear()
    GATE.clear()
    worker.END_RETRY_SECONDS = 1.0 if aborted else 0.2
    tasks = Tasks(store)
    failed = threading.Event()
    busy = tasks.submit(node="n1", type="t_wait", id="7", user="u@pve", serial="vm:7")
    queued = tasks.submit(node="n1", type="t_count", id="7", user="u@pve", serial="vm:7")
    key = record_key("n1", queued)
    real = store.txn_revision
    failures: list[str] = []

    def claim_fails_once(compare: Any, success: Any) -> int:
        op = success[0]
        if not failures and op[1] == key and op[2].get("status") == "running":
            failures.append(key)
            if landed:
                real(compare, success)
            failed.set()
            raise Unavailable("connection to etcd was reset")
        return real(compare, success)

    store.txn_revision = claim_fails_once  # type: ignore[method-assign]
    try:
        GATE.set()
        assert tasks.wait(busy)["exitstatus"] == "OK"
        if aborted:
            assert failed.wait(10)
            tasks.abort(queued)
        assert tasks.wait(queued, timeout=10)["exitstatus"] == (ABORTED if aborted else "OK")
    finally:
        del store.txn_revision
    assert failures == [key]
    assert RUNS == ([] if aborted else [queued])


def test_a_task_whose_put_landed_before_its_failure_was_reported_never_runs(
    store: StoreAPI, worker: TaskWorker
) -> None:
    """etcd applied the put, and the watch delivered the record, before the caller's
    put reported a failure (a connection reset right after etcd applied it). The API
    answered 503, so the task must not run; and it must not stay "running" or
    "queued" either: it ends unrun, as VOIDED. On a quiet guest (recorded as running,
    begun at once; an early handler waits at its gate) and on a busy one (queued)."""
    from corral.cluster.errors import Unavailable
    from corral.cluster.tasks import VOIDED

    RUNS.clear()
    GATE.clear()
    STEPS.clear()
    tasks = Tasks(store)
    real_put = store.put

    def put_then_fail(key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        real_put(key, value, *args, **kwargs)
        if key.startswith("tasks/") and value.get("type") in ("t_count", "t_early"):
            time.sleep(0.3)  # the watch delivers the record meanwhile
            raise Unavailable("connection to etcd was reset")
        return 0

    busy = tasks.submit(node="n1", type="t_wait", id="6", user="u@pve", serial="vm:6")
    store.put = put_then_fail  # type: ignore[method-assign]
    try:
        for type_, serial in (("t_count", "vm:66"), ("t_early", "vm:67"), ("t_count", "vm:6")):
            with pytest.raises(Unavailable):
                tasks.submit(node="n1", type=type_, id="6", user="u@pve", serial=serial)
    finally:
        del store.put
    ours = [kv.value for kv in store.range("tasks/n1/") if kv.value["type"] != "t_wait"]
    assert len(ours) == 3
    for rec in ours:
        assert tasks.wait(rec["upid"], timeout=10)["exitstatus"] == VOIDED
    GATE.set()
    assert tasks.wait(busy)["exitstatus"] == "OK"
    assert RUNS == []  # neither ran
    assert STEPS == ["prepared"]  # the early one never got past its gate


STEPS: list[str] = []


@task_handler("t_early", early=True)
def _early(ctx: TaskContext, args: dict[str, Any]) -> None:
    STEPS.append("prepared")
    try:
        ctx.recorded()
    finally:
        time.sleep(args.get("unwind", 0))  # still unwinding when a late put lands
    STEPS.append("changed")


def test_an_early_task_prepares_while_its_record_is_written_and_changes_after(
    store: StoreAPI, worker: TaskWorker
) -> None:
    """A start's handler begins as its record's put leaves (Tasks.submit) and prepares
    meanwhile; it changes nothing before the put has landed (TaskContext.recorded)."""
    STEPS.clear()
    tasks = Tasks(store)
    real_put = store.put

    def slow_put(key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("tasks/") and value.get("type") == "t_early":
            wait_for(lambda: STEPS == ["prepared"], timeout=10)  # begun before the put
            time.sleep(0.1)
            assert STEPS == ["prepared"]  # and waiting for it
        return real_put(key, value, *args, **kwargs)

    store.put = slow_put  # type: ignore[method-assign]
    try:
        upid = tasks.submit(node="n1", type="t_early", id="3", user="u@pve", serial="vm:3")
    finally:
        del store.put
    assert tasks.wait(upid)["exitstatus"] == "OK"
    assert STEPS == ["prepared", "changed"]


@pytest.mark.parametrize("unwind", [0.0, 0.4], ids=["lands-after", "lands-while-unwinding"])
def test_an_early_task_whose_record_put_failed_changes_nothing(
    store: StoreAPI, worker: TaskWorker, unwind: float
) -> None:
    """Its put failed (the API answered 503): the handler that began meanwhile stops
    at its gate, and nothing of the task is written. Should the put land after all
    (a frozen etcd applying it late), the task ends unrun, as VOIDED."""
    from corral.cluster.errors import Unavailable
    from corral.cluster.tasks import VOIDED

    STEPS.clear()
    tasks = Tasks(store)
    real_put = store.put
    late: list[threading.Timer] = []

    def put_fails_then_lands(key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key.startswith("tasks/") and value.get("type") == "t_early":
            wait_for(lambda: STEPS == ["prepared"], timeout=10)
            timer = threading.Timer(0.2, lambda: real_put(key, value, *args, **kwargs))
            late.append(timer)
            timer.start()
            raise Unavailable("connection to etcd was reset")
        return real_put(key, value, *args, **kwargs)

    store.put = put_fails_then_lands  # type: ignore[method-assign]
    try:
        with pytest.raises(Unavailable):
            tasks.submit(
                node="n1", type="t_early", id="4", user="u@pve", serial="vm:4",
                args={"unwind": unwind},
            )  # fmt: skip
        late[0].join()
    finally:
        del store.put
    (rec,) = [kv.value for kv in store.range("tasks/n1/") if kv.value["type"] == "t_early"]
    assert tasks.wait(rec["upid"], timeout=10)["exitstatus"] == VOIDED
    # The guest's queue moved on: the next task of the guest runs.
    after = tasks.submit(node="n1", type="t_ok", id="4", user="u@pve", serial="vm:4")
    assert tasks.wait(after, timeout=10)["exitstatus"] == "OK"
    assert STEPS == ["prepared"]  # never got past its gate
    assert tasks.log_lines(rec["upid"]) == ["TASK ERROR: " + VOIDED]


def test_settle_answers_at_the_tasks_outcome_and_a_status_read_waits_for_its_end(
    store: StoreAPI, worker: TaskWorker
) -> None:
    """settle() returns once the handler has returned, while the task's end is being
    written: the API's answer and the client's next poll overlap that write. A
    status read in that window waits for the write, so it never says "running"
    for a task that has ended, nor "OK" before the end is durable."""
    tasks = Tasks(store)
    real_txn = store.txn_revision
    ending = threading.Event()

    def slow_end(compare: Any, ops: Any, *args: Any, **kwargs: Any) -> Any:
        if any(op[0] == "put" and op[1].startswith("tasks/") and op[2].get("status") == "stopped"
               and op[2].get("type") == "t_count" for op in ops):  # fmt: skip
            ending.set()
            time.sleep(0.3)
        return real_txn(compare, ops, *args, **kwargs)

    store.txn_revision = slow_end  # type: ignore[method-assign]
    try:
        upid = tasks.submit(node="n1", type="t_count", id="70", user="u@pve", serial="vm:70")
        assert tasks.settle(upid, 20) is True
        assert store.get_value(record_key("n1", upid))["status"] == "running"  # not written yet
        assert ending.is_set()
        status = tasks.status(upid)  # waits for the end
        assert (status["status"], status["exitstatus"]) == ("stopped", "OK")
        assert store.get_value(record_key("n1", upid))["status"] == "stopped"
    finally:
        del store.txn_revision
