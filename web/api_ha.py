"""/cluster/ha with Proxmox VE 9's paths: resources, rules, status.

The rules are corral.cluster.ha.config's and .status'; this module declares
parameters and permissions (Proxmox's: Sys.Audit on / to read, Sys.Console
on / to change) and shapes answers.
"""

from __future__ import annotations

from typing import Any

from corral.cluster.errors import ParamError
from corral.cluster.ha import config, status
from corral.cluster.ha.env import HAState
from corral.cluster.ha.model import REQUESTED_STATES
from corral.cluster.schema import NODE, Param
from corral.web.api import Ctx, endpoint

READ = ("/", ["Sys.Audit"])
WRITE = ("/", ["Sys.Console"])
SID = Param("string", "HA resource ID (vm:100 / ct:100, or just the ID for a VM).", max_length=64)
COMMENT = Param("string", "Description.", optional=True, max_length=4096)
DIGEST = Param("string", "Prevent changes if the configuration changed.", optional=True)
DELETE = Param("string", "A list of settings you want to delete.", optional=True, max_length=4096)
RESOURCE_OPTS = {
    "state": Param(
        "string", "Requested resource state.", optional=True, enum=(*REQUESTED_STATES, "enabled")
    ),
    "max_restart": Param("integer", "Restart tries after a failed start.", optional=True,
                         minimum=0, maximum=10),
    "max_relocate": Param("integer", "Relocate tries after failed starts.", optional=True,
                          minimum=0, maximum=10),
    "failback": Param("boolean", "Move back to the highest-priority node.", optional=True),
    "comment": COMMENT,
    "group": Param("string", "HA group (deprecated in favour of rules): refused.", optional=True),
}  # fmt: skip
RULE_TYPES = ("node-affinity", "resource-affinity")
RULE_OPTS = {
    "resources": Param("string", "HA resource IDs (vm:100,ct:101).", optional=True),
    "nodes": Param("string", "Nodes with optional priority (node1:2,node2).", optional=True),
    "strict": Param("boolean", "Only run on the listed nodes.", optional=True),
    "affinity": Param("string", "Keep together or apart.", optional=True,
                      enum=("positive", "negative")),
    "disable": Param("boolean", "Whether the rule is disabled.", optional=True),
    "comment": COMMENT,
}  # fmt: skip


def _deletes(delete: str | None) -> list[str]:
    return [d.strip() for d in (delete or "").replace(";", ",").split(",") if d.strip()]


def _no_group(params: dict[str, Any]) -> None:
    if params.pop("group", None):
        raise ParamError.one("group", "HA groups are replaced by node-affinity rules")


@endpoint("GET", "/cluster/ha", perm=READ, description="Directory index.")
def ha_index(ctx: Ctx) -> list[dict[str, str]]:
    return [{"id": "resources"}, {"id": "rules"}, {"id": "status"}]


@endpoint(
    "GET",
    "/cluster/ha/resources",
    params={"type": Param("string", "Only this type.", optional=True, enum=("ct", "vm"))},
    perm=READ,
    description="List HA resources.",
)
def list_resources(ctx: Ctx, type: str | None = None) -> list[dict[str, Any]]:
    res = HAState(ctx.store).resources().values()
    return [
        {**r.to_dict(), "digest": config.digest(r.to_dict())} for r in res if type in (None, r.kind)
    ]


@endpoint(
    "POST",
    "/cluster/ha/resources",
    params={"sid": SID, **RESOURCE_OPTS},
    perm=WRITE,
    description="Create a new HA resource.",
)
def create_resource(ctx: Ctx, sid: str, **params: Any) -> None:
    _no_group(params)
    config.add_resource(ctx.store, {**params, "sid": sid})


@endpoint(
    "GET",
    "/cluster/ha/resources/{sid}",
    params={"sid": SID},
    perm=READ,
    description="Read resource configuration.",
)
def read_resource(ctx: Ctx, sid: str) -> dict[str, Any]:
    return config.get_resource(ctx.store, sid)


@endpoint(
    "PUT",
    "/cluster/ha/resources/{sid}",
    params={"sid": SID, **RESOURCE_OPTS, "delete": DELETE, "digest": DIGEST},
    perm=WRITE,
    description="Update resource configuration.",
)
def update_resource(
    ctx: Ctx, sid: str, delete: str | None = None, digest: str | None = None, **params: Any
) -> None:
    _no_group(params)
    config.update_resource(ctx.store, sid, params, delete=_deletes(delete), digest_=digest)


@endpoint(
    "DELETE",
    "/cluster/ha/resources/{sid}",
    params={
        "sid": SID,
        "purge": Param("boolean", "Remove the resource from rules too.", optional=True, default=1),
    },
    perm=WRITE,
    description="Delete resource configuration.",
)
def delete_resource(ctx: Ctx, sid: str, purge: int = 1) -> None:
    config.remove_resource(ctx.store, sid, purge=bool(purge))


def _move(kind: str) -> None:
    @endpoint(
        "POST",
        f"/cluster/ha/resources/{{sid}}/{kind}",
        params={"sid": SID, "node": NODE},
        perm=WRITE,
        description=f"Request resource {kind} to another node.",
    )
    def move(ctx: Ctx, sid: str, node: str) -> dict[str, Any]:
        sid = config.request_move(ctx.store, sid, kind, node)
        return {"sid": sid, "requested-node": node}

    move.__name__ = f"ha_{kind}"


_move("migrate")
_move("relocate")


@endpoint(
    "GET",
    "/cluster/ha/rules",
    params={
        "type": Param("string", "Only rules of this type.", optional=True, enum=RULE_TYPES),
        "resource": Param("string", "Only rules with this resource.", optional=True),
    },
    perm=READ,
    description="Get HA rules.",
)
def list_rules(ctx: Ctx, type: str | None = None, resource: str | None = None) -> list[Any]:
    sid = config.normalize_sid(resource) if resource else None
    out = []
    for r in HAState(ctx.store).rules():
        if type not in (None, r.type) or (sid and sid not in r.resources):
            continue
        out.append({**r.to_dict(), "digest": config.digest(r.to_dict())})
    return out


@endpoint(
    "POST",
    "/cluster/ha/rules",
    params={
        "rule": Param("string", "HA rule identifier.", format="pve-configid", max_length=64),
        "type": Param("string", "HA rule type.", enum=RULE_TYPES),
        **RULE_OPTS,
    },
    perm=WRITE,
    description="Create HA rule.",
)
def create_rule(ctx: Ctx, **params: Any) -> None:
    config.add_rule(ctx.store, params)


@endpoint(
    "GET",
    "/cluster/ha/rules/{rule}",
    params={"rule": Param("string", "HA rule identifier.")},
    perm=READ,
    description="Read HA rule.",
)
def read_rule(ctx: Ctx, rule: str) -> dict[str, Any]:
    return config.get_rule(ctx.store, rule)


@endpoint(
    "PUT",
    "/cluster/ha/rules/{rule}",
    params={
        "rule": Param("string", "HA rule identifier."),
        "type": Param("string", "HA rule type.", optional=True, enum=RULE_TYPES),
        **RULE_OPTS,
        "delete": DELETE,
        "digest": DIGEST,
    },
    perm=WRITE,
    description="Update HA rule.",
)
def update_rule(
    ctx: Ctx, rule: str, delete: str | None = None, digest: str | None = None, **params: Any
) -> None:
    config.update_rule(ctx.store, rule, params, delete=_deletes(delete), digest_=digest)


@endpoint(
    "DELETE",
    "/cluster/ha/rules/{rule}",
    params={"rule": Param("string", "HA rule identifier.")},
    perm=WRITE,
    description="Delete HA rule.",
)
def delete_rule(ctx: Ctx, rule: str) -> None:
    config.delete_rule(ctx.store, rule)


@endpoint("GET", "/cluster/ha/status", perm=READ, description="Directory index.")
def status_index(ctx: Ctx) -> list[dict[str, str]]:
    return [{"name": "current"}, {"name": "manager_status"}]


@endpoint("GET", "/cluster/ha/status/current", perm=READ, description="Get HA manager status.")
def status_current(ctx: Ctx) -> list[dict[str, Any]]:
    return status.current(ctx.store)


@endpoint(
    "GET",
    "/cluster/ha/status/manager_status",
    perm=READ,
    description="Get full HA manager status, including LRM status.",
)
def status_manager(ctx: Ctx) -> dict[str, Any]:
    return status.manager_status(ctx.store)


@endpoint(
    "POST",
    "/cluster/ha/status/node-maintenance",
    params={"node": NODE, "enable": Param("boolean", "Enter (1) or leave (0) maintenance.")},
    perm=WRITE,
    description="corral: put a node into HA maintenance (its HA guests migrate away) or back "
    "(ha-manager crm-command node-maintenance).",
)
def node_maintenance(ctx: Ctx, node: str, enable: int) -> None:
    config.request_maintenance(ctx.store, node, enable=bool(enable))
