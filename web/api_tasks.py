"""Tasks: list, status, log, abort (/nodes/{node}/tasks, /cluster/tasks)."""

from __future__ import annotations

from typing import Any

from flask import Response

from corral.cluster.errors import NotFound
from corral.cluster.schema import NODE, Param
from corral.cluster.tasks import Upid
from corral.web.api import Ctx, endpoint
from corral.web.app import json_response

UPID = Param("string", "The task's unique ID.", max_length=512)


def _visible(ctx: Ctx, task: dict[str, Any]) -> bool:
    owner = str(task.get("user", ""))
    if (
        owner == ctx.user
        or owner.split("!")[0] == ctx.identity.userid
        and ctx.identity.tokenid is None
    ):
        return True
    return ctx.can(f"/nodes/{task['node']}", ["Sys.Audit"])


def _one(ctx: Ctx, node: str, upid: str) -> dict[str, Any]:
    parsed = Upid.parse(upid)
    if parsed.node != node:
        raise NotFound(f"no such task '{upid}' on node '{node}'")
    rec = ctx.tasks.get(upid)
    if not _visible(ctx, rec):
        from corral.cluster.errors import Forbidden

        raise Forbidden("Permission check failed")
    return rec


@endpoint(
    "GET",
    "/nodes/{node}/tasks",
    params={
        "node": NODE,
        "start": Param(
            "integer", "List tasks beginning from this offset.", optional=True, minimum=0, default=0
        ),
        "limit": Param(
            "integer", "Only list this amount of tasks.", optional=True, minimum=0, default=50
        ),
        "userfilter": Param("string", "Only list tasks from this user.", optional=True),
        "typefilter": Param(
            "string", "Only list tasks of this type (e.g., vzstart, vzdump).", optional=True
        ),
        "vmid": Param("integer", "Only list tasks for this VM.", optional=True, minimum=100),
        "errors": Param("boolean", "Only list tasks with a status of ERROR.", optional=True),
        "source": Param(
            "string",
            "List archived, active or all tasks.",
            optional=True,
            enum=("archive", "active", "all"),
            default="archive",
        ),
    },
    description="Read task list for one node (finished tasks).",
)
def node_tasks(
    ctx: Ctx,
    node: str,
    start: int = 0,
    limit: int = 50,
    userfilter: str | None = None,
    typefilter: str | None = None,
    vmid: int | None = None,
    errors: int = 0,
    source: str = "archive",
) -> Response:
    rows = [t for t in ctx.tasks.list(node) if _visible(ctx, t)]
    if source == "archive":
        rows = [t for t in rows if "status" in t]
    elif source == "active":
        rows = [t for t in rows if "status" not in t]
    if userfilter:
        rows = [t for t in rows if userfilter in str(t["user"])]
    if typefilter:
        rows = [t for t in rows if t["type"] == typefilter]
    if vmid is not None:
        rows = [t for t in rows if t["id"] == str(vmid)]
    if errors:
        rows = [t for t in rows if t.get("status") not in (None, "OK")]
    total = len(rows)
    return json_response(
        {"data": rows[start : start + limit] if limit else rows[start:], "total": total}
    )


@endpoint(
    "GET",
    "/nodes/{node}/tasks/{upid}",
    params={"node": NODE, "upid": UPID},
    description="Task index.",
)
def task_index(ctx: Ctx, node: str, upid: str) -> list[dict[str, str]]:
    _one(ctx, node, upid)
    return [{"name": "log"}, {"name": "status"}]


@endpoint(
    "GET",
    "/nodes/{node}/tasks/{upid}/status",
    params={"node": NODE, "upid": UPID},
    description="Read task status.",
)
def task_status(ctx: Ctx, node: str, upid: str) -> dict[str, Any]:
    _one(ctx, node, upid)
    return ctx.tasks.status(upid)


@endpoint(
    "GET",
    "/nodes/{node}/tasks/{upid}/log",
    params={
        "node": NODE,
        "upid": UPID,
        "start": Param(
            "integer",
            "Start at this line when reading the tasklog",
            optional=True,
            minimum=0,
            default=0,
        ),
        "limit": Param(
            "integer",
            "The amount of lines to read from the tasklog.",
            optional=True,
            minimum=0,
            default=50,
        ),
    },
    description="Read task log.",
)
def task_log(ctx: Ctx, node: str, upid: str, start: int = 0, limit: int = 50) -> Response:
    _one(ctx, node, upid)
    lines = ctx.tasks.log_lines(upid)
    end = len(lines) if not limit else start + limit
    data = [{"n": i + 1, "t": line} for i, line in enumerate(lines[start:end], start)]
    return json_response({"data": data, "total": len(lines)})


@endpoint(
    "DELETE",
    "/nodes/{node}/tasks/{upid}",
    params={"node": NODE, "upid": UPID},
    description="Stop a task.",
)
def task_stop(ctx: Ctx, node: str, upid: str) -> None:
    rec = _one(ctx, node, upid)
    if rec["user"] != ctx.user:
        ctx.check(f"/nodes/{node}", ["Sys.Modify"])
    ctx.tasks.abort(upid)


@endpoint("GET", "/cluster/tasks", description="List recent tasks (cluster wide).")
def cluster_tasks(ctx: Ctx) -> list[dict[str, Any]]:
    return [t for t in ctx.tasks.list() if _visible(ctx, t)][:1000]
