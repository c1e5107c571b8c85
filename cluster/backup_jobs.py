"""Scheduled backup jobs (Proxmox's /cluster/backup) and retention after backups.

A job is a record `backupjobs/{id}`: a calendar-event `schedule`, a
selection (`vmid` list, `all` with `exclude`; `node` restricts it to one
node) and vzdump options (storage, mode, compress, notes-template,
prune-backups...). Every node's daemon looks at the jobs on each status
round (`status_hook`) and backs up the guests *it owns*; a guest that
migrates is backed up by its new node.

Never twice, never lost: each node keeps its last run of each job in
`backupjobstate/{id}/{node}` and claims a due run with a compare-and-swap on
that key *in the same transaction* that queues the run's vzdump task, so two
daemons of one node cannot both start it, and a daemon killed between the
two leaves neither. A queued task survives a restart (the task worker takes
it up again). A run the node's restart interrupts is ended "interrupted" and
its recovery (corral.cluster.backup_recovery) queues the guests it had not
finished, once. A run missed while the node was down is skipped (Proxmox's
default) unless the job sets `repeat-missed`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from corral.cluster import calendar, keys, prune
from corral.cluster.store_api import StoreAPI

log = logging.getLogger(__name__)

MISSED_AFTER = 120.0  # s after its time a run counts as missed
# Job keys that are vzdump options, handed to the vzdump task as they are.
VZDUMP_OPTIONS = ("storage", "mode", "compress", "notes-template", "bwlimit", "protected",
                  "prune-backups", "remove")  # fmt: skip
# (vmids, vzdump options, job id) -> (UPID, task key, queued task record)
Submit = Callable[[list[int], dict[str, Any], str], tuple[str, str, dict[str, Any]]]
POOLS = "access/pools/"  # corral.cluster.access_groups' pool records ({"poolid", "vms"})


def new_id() -> str:
    return f"backup-{secrets.token_hex(4)}-{secrets.token_hex(2)}"


def jobs(store: StoreAPI) -> list[dict[str, Any]]:
    return sorted((kv.value for kv in store.range(keys.BACKUP_JOBS)), key=lambda j: j["id"])


def _ids(text: Any) -> set[int]:
    return {int(x) for x in str(text or "").replace(";", ",").replace(" ", ",").split(",") if x}


def selected(
    job: dict[str, Any], guests: list[dict[str, Any]], pools: dict[str, set[int]] | None = None
) -> list[int]:
    """VMIDs of `guests` (records) the job backs up: its list, its pool's members
    (`pools`: pool -> VMIDs), or all minus excluded."""
    if job.get("node"):
        guests = [g for g in guests if g["node"] == job["node"]]
    if job.get("pool"):
        members = (pools or {}).get(job["pool"], set())
        return sorted(g["vmid"] for g in guests if g["vmid"] in members)
    if job.get("vmid"):
        wanted = _ids(job["vmid"])
        return sorted(g["vmid"] for g in guests if g["vmid"] in wanted)
    if job.get("all"):
        skip = _ids(job.get("exclude"))
        return sorted(
            g["vmid"]
            for g in guests
            if g["vmid"] not in skip and not (g.get("config") or {}).get("template")
        )
    return []


def pool_members(store: StoreAPI) -> dict[str, set[int]]:
    return {kv.value["poolid"]: set(kv.value.get("vms", [])) for kv in store.range(POOLS)}


def covered(store: StoreAPI) -> set[int]:
    """VMIDs some enabled job backs up (for /cluster/backup-info/not-backed-up)."""
    recs = [kv.value for kv in store.range(keys.GUESTS)]
    pools = pool_members(store)
    out: set[int] = set()
    for job in jobs(store):
        if int(job.get("enabled", 1)):
            out.update(selected(job, recs, pools))
    return out


def next_run(store: StoreAPI, job: dict[str, Any], node: str) -> float | None:
    st = store.get(keys.backup_job_state(job["id"], node))
    last = st.value["last"] if st is not None else float(job.get("created") or time.time())
    return calendar.next_event(job["schedule"], last)


def run_due(store: StoreAPI, node: str, now: float, submit: Submit) -> list[str]:
    """Queue every job run of `node` that is due at `now` (`submit` makes the task
    record); returns their UPIDs. Each run is claimed with a compare-and-swap in
    the transaction that queues it."""
    upids = []
    # Read only once a run is due: this runs every 2 s on every node, and the guest
    # records of a 10,000-guest cluster are 2 MB.
    local: list[dict[str, Any]] | None = None
    for job in jobs(store):
        if not int(job.get("enabled", 1)) or (job.get("node") and job["node"] != node):
            continue
        key = keys.backup_job_state(job["id"], node)
        st = store.get(key)
        last = st.value["last"] if st is not None else float(job.get("created") or now)
        try:
            due = calendar.next_event(job["schedule"], last)
        except Exception as err:  # noqa: BLE001 - one bad job must not stop the others
            log.warning("backup job %s: %s", job["id"], err)
            continue
        if due is None or due > now:
            continue
        missed = now - due > MISSED_AFTER and not int(job.get("repeat-missed") or 0)
        compare = (
            [("version", key, "==", 0)] if st is None else [("mod", key, "==", st.mod_revision)]
        )
        state: dict[str, Any] = {"last": now, "due": due, "missed": missed}
        ops: list[tuple[Any, ...]] = []
        vmids: list[int] = []
        if not missed:
            if local is None:
                local = [kv.value for kv in store.range(keys.GUESTS)
                         if kv.value.get("node") == node]  # fmt: skip
            vmids = selected(job, local, pool_members(store) if job.get("pool") else None)
        if not missed and vmids:
            opts = {k: job[k] for k in VZDUMP_OPTIONS if job.get(k) is not None}
            opts.setdefault("storage", "local")
            opts.setdefault("compress", "zstd")
            upid, task_key, record = submit(vmids, opts, job["id"])
            state["upid"] = upid
            ops.append(("put", task_key, record))
        if not store.txn(compare, [("put", key, state), *ops]):
            continue  # another run of this node's scheduler claimed it
        if missed:
            log.info("backup job %s: run of %s was missed; next one by schedule", job["id"], due)
        elif ops:
            upids.append(state["upid"])
    return upids


def status_hook(node: Any) -> None:
    """Called by the node daemon every status round (2 s)."""
    from corral.cluster.task_client import Tasks

    def submit(vmids: list[int], opts: dict[str, Any], job: str) -> tuple[str, str, dict[str, Any]]:
        return Tasks(node.store).prepare(
            node=node.name, type="vzdump", id=str(vmids[0]) if len(vmids) == 1 else "",
            user="root@pam", args={"vmids": vmids, "opts": opts, "job": job},
            serial=f"vzdump:{node.name}",
        )  # fmt: skip

    for upid in run_due(node.store, node.name, time.time(), submit):
        log.info("backup job started: %s", upid)


def prune_group(
    store: StoreAPI, volumes: Any, storage: str, vmid: int, type: str | None,
    keep: dict[str, int], *, dry_run: bool, log_fn: Callable[[str], None],
) -> list[dict[str, Any]]:  # fmt: skip
    """Mark (and unless `dry_run` remove) the backups of `vmid` on `storage`;
    protected ones (volume attribute) always stay."""
    from corral.cluster import archive

    attrs = {kv.key.split("/", 1)[1]: kv.value
             for kv in store.range(keys.volume_attrs(f"{storage}:"))}  # fmt: skip
    rows = []
    for row in volumes.list_volumes(storage, content="backup", vmid=vmid):
        parsed = archive.parse_name(row["volid"].split("/", 1)[-1])
        if parsed is None or (type and parsed[0] != type):
            continue
        protected = int(bool(attrs.get(row["volid"], {}).get("protected")))
        rows.append({"volid": row["volid"], "ctime": row["ctime"], "vmid": vmid,
                     "type": parsed[0], "protected": protected})  # fmt: skip
    marked = prune.mark(rows, keep)
    if not dry_run:
        for row in marked:
            if row["mark"] == "remove":
                volumes.free(row["volid"])
                store.delete(keys.volume_attrs(row["volid"]))
                log_fn(f"removed old backup {row['volid']}")
    return marked
