"""A node's services, network interfaces and log: `/nodes/{node}/services`,
`/network`, `/syslog`, `/journal` in Proxmox's shapes, from what the node really
runs and has (cluster.host_services, cluster.host_network, cluster.node_logs).

Answered by the node itself (`local=True`: another node forwards the call).
The network view is read-only: corral does not write the host's network config.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import host_network, host_services, node_logs
from corral.cluster.errors import ParamError
from corral.cluster.schema import NODE, Param
from corral.web.api import Ctx, endpoint
from corral.web.api_core import require_node

SERVICE = Param("string", "Service ID", enum=host_services.SERVICE_IDS)
_SERVICE_ROW = {
    "type": "object",
    "properties": {
        "service": {"type": "string"},
        "name": {"type": "string"},
        "desc": {"type": "string"},
        "state": {"type": "string"},
        "active-state": {"type": "string"},
        "unit-state": {"type": "string"},
        "pid": {"type": "integer"},
        "uptime": {"type": "integer"},
        "actions": {"type": "array", "items": {"type": "string"}},
    },
}
_DATE = r"\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?)?"


@endpoint(
    "GET",
    "/nodes/{node}/services",
    params={"node": NODE},
    perm=("/nodes/{node}", ["Sys.Audit"]),
    description="Service list: corral's own daemons and the host's services, as they run.",
    local=True,
    returns={"type": "array", "items": _SERVICE_ROW},
)
def services(ctx: Ctx, node: str) -> list[dict[str, Any]]:
    require_node(ctx, node)
    return host_services.list_services(ctx.services)


@endpoint(
    "GET",
    "/nodes/{node}/services/{service}",
    params={"node": NODE, "service": SERVICE},
    perm=("/nodes/{node}", ["Sys.Audit"]),
    description="Directory index.",
)
def service_index(ctx: Ctx, node: str, service: str) -> list[dict[str, str]]:
    require_node(ctx, node)
    return [{"subdir": s} for s in ("state", "start", "stop", "restart", "reload")]


@endpoint(
    "GET",
    "/nodes/{node}/services/{service}/state",
    params={"node": NODE, "service": SERVICE},
    perm=("/nodes/{node}", ["Sys.Audit"]),
    description="Read service properties.",
    local=True,
    returns=_SERVICE_ROW,
)
def service_state(ctx: Ctx, node: str, service: str) -> dict[str, Any]:
    require_node(ctx, node)
    return host_services.get_service(ctx.services, service)


def _action(action: str, description: str) -> None:
    @endpoint(
        "POST",
        f"/nodes/{{node}}/services/{{service}}/{action}",
        params={"node": NODE, "service": SERVICE},
        perm=("/nodes/{node}", ["Sys.Modify"]),
        description=description,
        local=True,
        returns={"type": "string"},
    )
    def act(ctx: Ctx, node: str, service: str) -> str:
        require_node(ctx, node)
        why = host_services.refusal(ctx.services, service, action)
        if why is not None:
            raise ParamError.one("service", f"cannot {action} {service}: {why}")
        return ctx.submit(node=node, type=f"srv{action}", id=service, args={"service": service},
                          serial=f"service:{service}")  # fmt: skip

    act.__name__ = f"service_{action}"


_action("start", "Start service.")
_action("stop", "Stop service.")
_action("restart", "Hard restart service (corral's private etcd member only).")
_action("reload", "Reload service (etcd has no reload: it restarts).")


@endpoint(
    "GET",
    "/nodes/{node}/network",
    params={
        "node": NODE,
        "type": Param(
            "string",
            "Only list specific interface types.",
            optional=True,
            enum=(
                "bridge",
                "bond",
                "eth",
                "alias",
                "vlan",
                "fabric",
                "OVSBridge",
                "OVSBond",
                "OVSPort",
                "OVSIntPort",
                "vnet",
                "any_bridge",
                "any_local_bridge",
                "include_sdn",
            ),
        ),
    },  # fmt: skip
    perm=("/nodes/{node}", ["Sys.Audit"]),
    description="List the node's network interfaces as the kernel has them (read-only).",
    local=True,
    returns={"type": "array", "items": {"type": "object"}},
)
def network(ctx: Ctx, node: str, type: str | None = None) -> list[dict[str, Any]]:
    require_node(ctx, node)
    return host_network.filtered(None if type == "include_sdn" else type)


@endpoint(
    "GET",
    "/nodes/{node}/network/{iface}",
    params={
        "node": NODE,
        "iface": Param(
            "string", "Network interface name.", pattern=r"[A-Za-z0-9][-_.:@A-Za-z0-9]{1,19}"
        ),
    },  # fmt: skip
    perm=("/nodes/{node}", ["Sys.Audit"]),
    description="Read network device configuration (as the kernel has it).",
    local=True,
    returns={"type": "object"},
)
def network_iface(ctx: Ctx, node: str, iface: str) -> dict[str, Any]:
    require_node(ctx, node)
    return host_network.interface(iface)


@endpoint(
    "GET",
    "/nodes/{node}/syslog",
    params={
        "node": NODE,
        "start": Param(
            "integer",
            "Line offset (the first line is 0); without it, the last `limit` lines.",
            optional=True,
            minimum=0,
        ),
        "limit": Param("integer", "Number of lines.", optional=True, minimum=0, default=50),
        "since": Param(
            "string", "Display all log since this date-time string.", optional=True, pattern=_DATE
        ),
        "until": Param(
            "string", "Display all log until this date-time string.", optional=True, pattern=_DATE
        ),
        "service": Param(
            "string",
            "Only this source: corrald, etcd, libvirtd or syslog.",
            optional=True,
            max_length=128,
        ),
    },  # fmt: skip
    perm=("/nodes/{node}", ["Sys.Syslog"]),
    description="Read the node's log: corrald, its etcd, libvirtd and the host's syslog.",
    local=True,
    returns={
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"n": {"type": "integer"}, "t": {"type": "string"}},
        },
    },  # fmt: skip
)
def syslog(
    ctx: Ctx,
    node: str,
    start: int | None = None,
    limit: int = 50,
    since: str | None = None,
    until: str | None = None,
    service: str | None = None,
) -> list[dict[str, Any]]:
    require_node(ctx, node)
    lo = _local(since, "since")
    hi = _local(until, "until")
    if lo is not None and hi is not None and lo > hi:
        raise ParamError.one("until", "is before 'since'")
    if until is not None and hi is not None and len(until) <= 10:
        hi += 86399  # a date alone means to its end
    rows = node_logs.window(node_logs.entries(ctx.data_dir, service), lo, hi)
    first = max(0, len(rows) - limit) if start is None else start
    return [{"n": i + 1, "t": e.line()} for i, e in enumerate(rows) if first <= i < first + limit]


def _local(text: str | None, name: str) -> float | None:
    if text is None:
        return None
    try:
        return node_logs.parse_local(text)
    except (ValueError, OverflowError):
        raise ParamError.one(name, f"'{text}' is not a valid date") from None


@endpoint(
    "GET",
    "/nodes/{node}/journal",
    params={
        "node": NODE,
        "since": Param(
            "integer",
            "Display all log since this UNIX epoch. Conflicts with 'startcursor'.",
            optional=True,
            minimum=0,
        ),
        "until": Param(
            "integer",
            "Display all log until this UNIX epoch. Conflicts with 'endcursor'.",
            optional=True,
            minimum=0,
        ),
        "lastentries": Param(
            "integer",
            "Limit to the last X lines. Conflicts with a range.",
            optional=True,
            minimum=0,
        ),
        "startcursor": Param(
            "string",
            "Start after the given Cursor. Conflicts with 'since'",
            optional=True,
            max_length=64,
        ),
        "endcursor": Param(
            "string",
            "End before the given Cursor. Conflicts with 'until'",
            optional=True,
            max_length=64,
        ),
    },  # fmt: skip
    perm=("/nodes/{node}", ["Sys.Syslog"]),
    description="Read the node's log as journal lines; the first and the last line are "
    "the cursors of the range (as Proxmox's journal reader answers).",
    local=True,
    returns={"type": "array", "items": {"type": "string"}},
)
def journal(
    ctx: Ctx,
    node: str,
    since: int | None = None,
    until: int | None = None,
    lastentries: int | None = None,
    startcursor: str | None = None,
    endcursor: str | None = None,
) -> list[str]:
    require_node(ctx, node)
    for a, b in (("since", "startcursor"), ("until", "endcursor")):
        if locals()[a] is not None and locals()[b] is not None:
            raise ParamError.one(b, f"conflicts with '{a}'")
    items = node_logs.entries(ctx.data_dir)
    lo, hi = 0, len(items)
    try:
        if startcursor:
            lo = node_logs.position(items, startcursor)
        if endcursor:
            hi = node_logs.position(items, endcursor) - 1
    except ValueError as err:
        raise ParamError.one("startcursor" if startcursor else "endcursor", str(err)) from None
    index = [
        i
        for i in range(lo, max(lo, hi))
        if (since is None or items[i].time >= since) and (until is None or items[i].time <= until)
    ]
    ranged = any(x is not None for x in (since, until, startcursor, endcursor))
    if lastentries is not None or not ranged:
        keep = lastentries if lastentries is not None else 500
        index = index[len(index) - keep :] if keep else []  # 0: none, only the cursors
    lines = [items[i].line() for i in index]
    if not index:
        # Nothing new: both cursors stay where the caller is, so polling goes on from there.
        here = startcursor or (node_logs.cursor(items, len(items) - 1) if items else "")
        return [here, here] if here else []
    return [node_logs.cursor(items, index[0]), *lines, node_logs.cursor(items, index[-1])]
