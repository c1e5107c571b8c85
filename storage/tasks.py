"""Storage task handlers: what runs on the node's worker after the API answered."""

from __future__ import annotations

import os
from typing import Any

from corral.cluster import keys
from corral.cluster.errors import Conflict, Unavailable
from corral.cluster.tasks import TaskContext, task_handler


def _volumes(ctx: TaskContext) -> Any:
    vols = ctx.worker.context.get("volumes")
    if vols is None:
        raise Unavailable(f"storage is not available on node '{ctx.node}'")
    return vols


@task_handler("imgcopy")
def _imgcopy(ctx: TaskContext, args: dict[str, Any]) -> None:
    """Move a verified upload into place (a rename within the storage)."""
    src, dest = args["src"], args["dest"]
    try:
        ctx.log(f"target file: {dest}")
        ctx.log(f"file size is: {args.get('size', 0)}")
        if os.path.exists(dest):
            raise Conflict(f"{os.path.basename(dest)} already exists")
        os.rename(src, dest)
        ctx.log("finished file import successfully")
    finally:
        if os.path.exists(src):
            os.unlink(src)


@task_handler("imgdel")
def _imgdel(ctx: TaskContext, args: dict[str, Any]) -> None:
    ctx.log(f"removing volume {args['volid']}")
    _volumes(ctx).free(args["volid"])
    ctx.store.delete(keys.volume_attrs(args["volid"]))
    ctx.log("done")
