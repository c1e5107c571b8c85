"""Backup jobs and retention through proxmoxer against a real corrald: a job
created with /cluster/backup runs on its schedule on the node that owns the
guest (the test moves the job's last run back instead of waiting a minute),
prunes by keep-last, and /cluster/backup-info/not-backed-up names exactly the
guests no job covers; prunebackups lists and removes."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from proxmoxer import ProxmoxAPI, ResourceException

from corral.cluster import keys
from corral.cluster.store import Store
from tests.backup.conftest import NODE, task_ok
from tests.util import wait_for

pytestmark = pytest.mark.timeout(300)


def _backups(prox: ProxmoxAPI, vmid: int) -> list[str]:
    rows = prox.nodes(NODE).storage("local").content.get(content="backup", vmid=vmid)
    return sorted(r["volid"] for r in rows)


def _run_now(store: Store, job: str) -> None:
    """Make the scheduler see a run as due (its last run a minute ago)."""
    store.put(keys.backup_job_state(job, NODE), {"last": time.time() - 61})


def _job_tasks(prox: ProxmoxAPI, vmid: int) -> list[dict]:
    return [t for t in prox.nodes(NODE).tasks.get(typefilter="vzdump", vmid=vmid)]


def test_scheduled_job_backs_up_and_prunes(
    prox: ProxmoxAPI, store: Store, make_ct: Callable[..., int]
) -> None:
    covered, uncovered = make_ct("local"), make_ct("local")
    job = f"crljob{covered}"
    prox.cluster.backup.post(id=job, schedule="*:*", vmid=str(covered), storage="local",
                             mode="snapshot", compress="zstd", **{"prune-backups": "keep-last=1"},
                             comment="every minute")  # fmt: skip
    try:
        (shown,) = [j for j in prox.cluster.backup.get() if j["id"] == job]
        assert shown["schedule"] == "*:*" and shown["type"] == "vzdump" and "next-run" in shown
        missing = {r["vmid"] for r in prox.cluster("backup-info")("not-backed-up").get()}
        assert uncovered in missing and covered not in missing
        first: list[str] = []
        for _ in (1, 2):
            before = len(_job_tasks(prox, covered))
            _run_now(store, job)
            wait_for(lambda b=before: len(_job_tasks(prox, covered)) > b, 30, 0.2, "the job's run")
            upid = _job_tasks(prox, covered)[0]["upid"]
            task_ok(prox, upid)
            now = _backups(prox, covered)
            assert len(now) == 1, now  # keep-last=1: the older one was pruned
            assert now != first
            first = now
            time.sleep(1.1)  # archive names are per second
        prox.cluster.backup(job).put(enabled=0)
        assert int(prox.cluster.backup(job).get()["enabled"]) == 0
        assert covered in {r["vmid"] for r in prox.cluster("backup-info")("not-backed-up").get()}
    finally:
        prox.cluster.backup(job).delete()
        for volid in _backups(prox, covered):
            prox.nodes(NODE).storage("local").content(volid).delete()
    with pytest.raises(ResourceException) as err:
        prox.cluster.backup(job).get()
    assert err.value.status_code == 404


def test_prunebackups_and_job_refusals(prox: ProxmoxAPI, make_ct: Callable[..., int]) -> None:
    vmid = make_ct("local")
    n = prox.nodes(NODE)
    for _ in range(3):
        task_ok(prox, n.vzdump.post(vmid=vmid, storage="local", compress="0"))
        time.sleep(1.1)
    assert len(_backups(prox, vmid)) == 3
    marks = n.storage("local").prunebackups.get(vmid=vmid, **{"prune-backups": "keep-last=2"})
    assert sorted(m["mark"] for m in marks) == ["keep", "keep", "remove"]
    assert len(_backups(prox, vmid)) == 3  # GET only tells
    n.storage("local").prunebackups.delete(vmid=vmid, **{"prune-backups": "keep-last=2"})
    assert len(_backups(prox, vmid)) == 2
    for volid in _backups(prox, vmid):
        n.storage("local").content(volid).delete()
    for params, word in (
        ({"schedule": "fry 10:00", "all": 1}, "schedule"),
        ({"schedule": "daily"}, "vmid"),
        ({"schedule": "daily", "all": 1, "prune-backups": "keep-lots=1"}, "prune-backups"),
        ({"schedule": "daily", "all": 1, "compress": "lzo"}, "compress"),
    ):
        with pytest.raises(ResourceException) as err:
            prox.cluster.backup.post(**params)
        assert err.value.status_code == 400 and word in str(err.value), (params, err.value)


def test_included_volumes(prox: ProxmoxAPI, btrfs: str, make_ct: Callable[..., int]) -> None:
    vmid = make_ct("local", mp0="local:0.1,mp=/mnt/a,backup=1", mp1="local:0.1,mp=/mnt/b")
    job = f"crlinc{vmid}"
    prox.cluster.backup.post(id=job, schedule="daily", vmid=str(vmid), storage="local")
    try:
        tree = prox.cluster.backup(job).included_volumes.get()
        (guest,) = tree["children"]
        assert guest["id"] == vmid and guest["type"] == "lxc" and guest["name"] == f"ct{vmid}"
        got = {v["id"]: (bool(int(v["included"])), v["reason"]) for v in guest["children"]}
        assert got == {"rootfs": (True, "rootfs"), "mp0": (True, "enabled"),
                       "mp1": (False, "disabled")}, got  # fmt: skip
        assert all(v["name"].startswith("local:") for v in guest["children"])
    finally:
        prox.cluster.backup(job).delete()


def test_storage_prune_backups_applies_when_none_given(
    prox: ProxmoxAPI, make_ct: Callable[..., int]
) -> None:
    vmid = make_ct("local")
    n = prox.nodes(NODE)
    with pytest.raises(ResourceException) as err:
        prox.storage("local").put(**{"prune-backups": "keep-often=1"})
    assert err.value.status_code == 400 and "prune-backups" in str(err.value)
    prox.storage("local").put(**{"prune-backups": "keep-last=2"})
    try:
        assert prox.storage("local").get()["prune-backups"] == "keep-last=2"
        for _ in range(3):
            task_ok(prox, n.vzdump.post(vmid=vmid, storage="local", compress="0"))
            time.sleep(1.1)
        assert len(_backups(prox, vmid)) == 2  # the storage's retention, after each backup
        marks = n.storage("local").prunebackups.get(vmid=vmid)
        assert sorted(m["mark"] for m in marks) == ["keep", "keep"]
        # One given to the call wins over the storage's.
        task_ok(prox, n.vzdump.post(vmid=vmid, storage="local", compress="0",
                                    **{"prune-backups": "keep-last=1"}))  # fmt: skip
        assert len(_backups(prox, vmid)) == 1
    finally:
        prox.storage("local").put(delete="prune-backups")
        for volid in _backups(prox, vmid):
            n.storage("local").content(volid).delete()
    assert "prune-backups" not in prox.storage("local").get()
