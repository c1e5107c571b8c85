"""What a node does at its restart for a vzdump task it was running when it died.

The task worker ends such a task "interrupted by node restart" after running
this recovery (its lines go to the interrupted task's log):

- the guests it was backing up are unlocked (lock `backup`): a restart must
  not leave a guest that no one can start, migrate or back up again;
- the half-written archive (`*.tmp`) and the live backup job's work folder
  (`.vzdump-VMID-*`) are removed from the target's `dump/` folder (a CT's
  temporary `vzdump` snapshot is removed by its next backup, as after a crash
  in Proxmox);
- a run of a backup job is not lost: the guests it had not finished (the
  task records the ones it had, `done`) are queued again in a new vzdump
  task, once. The job's state names the run's task; the new task replaces it
  there with a compare-and-swap, so a second restart during this recovery
  cannot queue them twice. A run started by hand (`vzdump`) is not repeated,
  as in Proxmox: its user sees it failed.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from corral.cluster import archive, guests, keys
from corral.cluster.errors import CorralError
from corral.cluster.task_client import Tasks
from corral.cluster.tasks import TaskContext, task_recovery


def _clean_dump_dir(ctx: TaskContext, storage: str, vmids: list[int]) -> None:
    try:
        path = guests._volumes(ctx).file_path(f"{storage}:backup/x.tar")
    except CorralError as err:
        ctx.log(f"cannot look for half-written archives on '{storage}': {err}")
        return
    folder = os.path.dirname(path)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        full = os.path.join(folder, name)
        parsed = archive.parse_name(name[: -len(".tmp")]) if name.endswith(".tmp") else None
        if parsed is not None and parsed[1] in vmids:
            os.unlink(full)
            ctx.log(f"removed the half-written archive {name}")
        elif any(name.startswith(f".vzdump-{vmid}-") for vmid in vmids):
            shutil.rmtree(full, ignore_errors=True)


def recover_vzdump(ctx: TaskContext, args: dict[str, Any]) -> None:
    vmids = [int(v) for v in args.get("vmids") or []]
    opts = dict(args.get("opts") or {})
    for vmid in vmids:
        rec = ctx.store.get_value(keys.guest(vmid))
        if rec is not None and rec.get("node") == ctx.node and rec.get("lock") == "backup":
            guests.set_lock(ctx.store, vmid, None, expect="backup")
            ctx.log(f"unlocked {guests._kind(rec)} {vmid}, whose backup was interrupted")
    if opts.get("storage"):
        _clean_dump_dir(ctx, str(opts["storage"]), vmids)
    job = args.get("job")
    if not job:
        return
    done = {int(v) for v in ctx.record.get("done") or []}
    left = [v for v in vmids if v not in done]
    if not left:
        return
    key = keys.backup_job_state(str(job), ctx.node)
    state = ctx.store.get(key)
    if state is None or state.value.get("upid") != ctx.upid:
        ctx.log("the job's run was already queued again")
        return
    upid, task_key, record = Tasks(ctx.store).prepare(
        node=ctx.node, type="vzdump", id=str(left[0]) if len(left) == 1 else "",
        user=ctx.user, args={**args, "vmids": left, "resumes": ctx.upid},
        serial=f"vzdump:{ctx.node}",
    )  # fmt: skip
    new_state = {**state.value, "upid": upid}
    if ctx.store.txn(
        [("mod", key, "==", state.mod_revision)],
        [("put", key, new_state), ("put", task_key, record)],
    ):
        ctx.log(f"backup job {job}: {' '.join(map(str, left))} queued again as {upid}")


def register() -> None:
    task_recovery("vzdump")(recover_vzdump)
