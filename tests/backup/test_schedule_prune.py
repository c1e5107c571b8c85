"""Pure parts of backup jobs: calendar events, retention marks, and the
scheduler's claim (never twice) on the in-memory store."""

from __future__ import annotations

import time

import pytest

from corral.cluster import backup_jobs, calendar, keys, prune
from corral.cluster.errors import ParamError
from corral.cluster.store_memory import MemoryStore


def at(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M"))


def show(t: float | None) -> str:
    return "none" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


# 2026-12-07 is a Monday.
@pytest.mark.parametrize(
    "spec,after,want",
    [
        ("daily", "2026-12-07 10:00", "2026-12-08 00:00"),
        ("00:00", "2026-12-07 23:59", "2026-12-08 00:00"),
        ("hourly", "2026-12-07 10:00", "2026-12-07 11:00"),
        ("*/5", "2026-12-07 10:02", "2026-12-07 10:05"),
        ("*/15", "2026-12-07 10:45", "2026-12-07 11:00"),
        ("sat 03:00", "2026-12-07 10:00", "2026-12-12 03:00"),
        ("mon..fri 8..17,22:0/15", "2026-12-11 22:45", "2026-12-14 08:00"),
        ("mon..fri 8..17,22:0/15", "2026-12-07 17:45", "2026-12-07 22:00"),
        ("mon..wed 30/10", "2026-12-07 10:31", "2026-12-07 10:40"),
        ("*/2:00", "2026-12-07 11:00", "2026-12-07 12:00"),
        ("12,14,16:05", "2026-12-07 14:05", "2026-12-07 16:05"),
        ("weekly", "2026-12-07 00:00", "2026-12-14 00:00"),
        ("monthly", "2026-12-07 00:00", "2027-01-01 00:00"),
        ("sat,sun", "2026-12-07 00:00", "2026-12-12 00:00"),
        ("*-02-29 01:00", "2026-12-07 00:00", "2028-02-29 01:00"),
        ("2025-01-01 00:00", "2026-12-07 00:00", "none"),
    ],
)
def test_next_event(spec: str, after: str, want: str) -> None:
    assert show(calendar.next_event(spec, at(after))) == want


@pytest.mark.parametrize("spec", ["", "fry 10:00", "25:00", "10:61", "*/0", "a b c", "1..x"])
def test_bad_calendar_events_name_the_parameter(spec: str) -> None:
    with pytest.raises(ParamError) as err:
        calendar.parse(spec)
    assert "schedule" in err.value.errors


def _backups(*stamps: str) -> list[dict]:
    return [{"volid": s, "ctime": at(s)} for s in stamps]


def test_prune_keep_last_and_daily_as_proxmox() -> None:
    rows = _backups("2026-12-07 10:00", "2026-12-07 08:00", "2026-12-06 22:00",
                    "2026-12-06 10:00", "2026-12-05 10:00", "2026-12-04 10:00")  # fmt: skip
    marks = {r["volid"]: r["mark"] for r in prune.mark(rows, {"keep-last": 2, "keep-daily": 2})}
    # keep-last keeps the two newest (both of the 7th); keep-daily then keeps
    # the newest of the next two days not yet covered: the 6th (22:00) and 5th.
    assert marks == {
        "2026-12-07 10:00": "keep", "2026-12-07 08:00": "keep",
        "2026-12-06 22:00": "keep", "2026-12-06 10:00": "remove",
        "2026-12-05 10:00": "keep", "2026-12-04 10:00": "remove",
    }  # fmt: skip


def test_prune_protected_and_keep_all() -> None:
    rows = _backups("2026-12-07 10:00", "2026-12-06 10:00", "2026-12-05 10:00")
    rows[2]["protected"] = 1
    marks = [r["mark"] for r in prune.mark(rows, {"keep-last": 1})]
    assert marks == ["keep", "remove", "protected"]
    assert {r["mark"] for r in prune.mark(rows[:2], {"keep-all": 1})} == {"keep"}
    assert prune.parse("keep-last=3, keep-weekly=2") == {"keep-last": 3, "keep-weekly": 2}
    for bad in ("keep-last=x", "keep-forever=1", "keep-all=1,keep-last=1"):
        with pytest.raises(ParamError):
            prune.parse(bad)


def test_scheduler_runs_each_due_job_once_per_node() -> None:
    store = MemoryStore()
    now = at("2026-12-07 10:00") + 30
    store.put(keys.guest(101), {"vmid": 101, "type": "lxc", "node": "n1", "config": {}})
    store.put(keys.guest(102), {"vmid": 102, "type": "lxc", "node": "n2", "config": {}})
    store.put(keys.guest(103), {"vmid": 103, "type": "qemu", "node": "n1",
                                "config": {"template": 1}})  # fmt: skip
    job = {"id": "j1", "schedule": "*:00", "all": 1, "enabled": 1,
           "created": at("2026-12-07 09:30"), "storage": "local"}  # fmt: skip
    store.put(keys.backup_job("j1"), job)
    calls: list[tuple[list[int], dict, str]] = []

    def submit(vmids: list[int], opts: dict, job_id: str) -> tuple[str, str, dict]:
        calls.append((vmids, opts, job_id))
        return f"UPID{len(calls)}", f"tasks/x/UPID{len(calls)}", {"queued": vmids}

    # A daemon that dies while it queues a due run (here: making the task record)
    # has claimed nothing: the run is not lost, the next look queues it.
    def dies(vmids: list[int], opts: dict, job_id: str) -> tuple[str, str, dict]:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backup_jobs.run_due(store, "n1", now, dies)
    assert store.get(keys.backup_job_state("j1", "n1")) is None
    # Two schedulers of node n1 (a restart racing the old one) see the run due:
    # only the first claim wins; n2 backs up its own guest.
    assert backup_jobs.run_due(store, "n1", now, submit) == ["UPID1"]
    # The claim and the queued task are one write.
    assert store.get_value("tasks/x/UPID1") == {"queued": [101]}
    assert store.get_value(keys.backup_job_state("j1", "n1"))["upid"] == "UPID1"
    assert backup_jobs.run_due(store, "n1", now, submit) == []
    assert backup_jobs.run_due(store, "n2", now, submit) == ["UPID2"]
    assert [c[0] for c in calls] == [[101], [102]]  # the template is never backed up
    assert calls[0][1]["storage"] == "local" and calls[0][1]["compress"] == "zstd"
    assert backup_jobs.run_due(store, "n1", now + 1800, submit) == []  # next at 11:00
    assert backup_jobs.run_due(store, "n1", now + 3600, submit) == ["UPID3"]
    # Down for hours: the missed run is skipped, the next one runs on time.
    assert backup_jobs.run_due(store, "n1", now + 5 * 3600, submit) == []
    assert backup_jobs.run_due(store, "n1", now + 6 * 3600 - 25, submit) == ["UPID4"]
    assert backup_jobs.covered(store) == {101, 102}
    # A pool selects its members (on the node that owns each).
    store.put("access/pools/p1", {"poolid": "p1", "comment": "", "vms": [102], "storage": []})
    store.put(keys.backup_job("j1"), {**job, "all": 0, "pool": "p1", "repeat-missed": 1})
    assert backup_jobs.run_due(store, "n2", now + 6 * 3600 + 60, submit) == ["UPID5"]
    assert calls[-1][0] == [102] and backup_jobs.covered(store) == {102}


def test_the_scheduler_reads_guest_records_only_for_a_due_run() -> None:
    """It looks every 2 s on every node: no job due, no read of the guest records
    (2 MB at 10,000 guests)."""
    store = MemoryStore()
    now = at("2026-12-07 10:00") + 30
    store.put(keys.guest(101), {"vmid": 101, "type": "lxc", "node": "n1", "config": {}})
    ranges: list[str] = []
    real_range = store.range

    def counting(prefix: str, *args: object, **kwargs: object) -> object:
        ranges.append(prefix)
        return real_range(prefix, *args, **kwargs)  # type: ignore[arg-type]

    store.range = counting  # type: ignore[method-assign]

    def submit(vmids: list[int], opts: dict, job_id: str) -> tuple[str, str, dict]:
        return "UPID1", "tasks/x/UPID1", {"queued": vmids}

    assert backup_jobs.run_due(store, "n1", now, submit) == []  # no job at all
    job = {"id": "j1", "schedule": "*:00", "all": 1, "enabled": 1,
           "created": now, "storage": "local"}  # fmt: skip
    store.put(keys.backup_job("j1"), job)
    assert backup_jobs.run_due(store, "n1", now, submit) == []  # next run at 11:00
    assert keys.GUESTS not in ranges
    assert backup_jobs.run_due(store, "n1", now + 3600, submit) == ["UPID1"]
    assert ranges.count(keys.GUESTS) == 1


def test_interrupted_job_run_is_queued_again_once() -> None:
    from corral.cluster import backup  # noqa: F401 - registers vzdump's recovery
    from corral.cluster.tasks import INTERRUPTED, TaskWorker, Upid, record_key

    store = MemoryStore()
    for vmid in (101, 102):
        lock = "backup" if vmid == 102 else None
        store.put(keys.guest(vmid), {"vmid": vmid, "type": "lxc", "node": "n1", "config": {},
                                     "lock": lock})  # fmt: skip
    upid = str(Upid.new("n1", "vzdump", "", "root@pam", clock=store.clock))
    args = {"vmids": [101, 102], "opts": {}, "job": "j1"}
    rec = {**Upid.parse(upid).fields(), "status": "running", "args": args, "serial": "vzdump:n1",
           "abort": False, "done": [101]}  # fmt: skip
    store.put(record_key("n1", upid), rec)
    store.put(keys.backup_job_state("j1", "n1"), {"last": 1.0, "due": 1.0, "upid": upid})
    worker = TaskWorker(store, "n1")
    try:
        worker._recover(rec)  # what start() does for a task its node died running
        worker._recover(rec)  # killed again during that recovery: nothing queued twice
    finally:
        worker.stop()
    assert store.get_value(record_key("n1", upid))["exitstatus"] == INTERRUPTED
    assert store.get_value(keys.guest(102))["lock"] is None
    queued = [kv.value for kv in store.range("tasks/n1/") if kv.value["upid"] != upid]
    assert len(queued) == 1 and queued[0]["status"] == "queued", queued
    assert queued[0]["args"]["vmids"] == [102] and queued[0]["args"]["resumes"] == upid
    assert store.get_value(keys.backup_job_state("j1", "n1"))["upid"] == queued[0]["upid"]
