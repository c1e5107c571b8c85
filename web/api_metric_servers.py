"""`/cluster/metrics/server`: external metric servers (Graphite, InfluxDB), as Proxmox.

Records live in etcd under keys.METRIC_SERVERS; every node pushes its own
figures to each enabled server (corral.cluster.metrics_push).
"""

from __future__ import annotations

import re
from typing import Any

from corral.cluster import keys
from corral.cluster.errors import Conflict, NotFound, ParamError
from corral.cluster.guests import digest as config_digest
from corral.cluster.schema import DIGEST, Param
from corral.web.api import Ctx, endpoint

ID = Param(
    "string", "The ID of the entry.", pattern=r"[A-Za-z][A-Za-z0-9\-_.]{0,63}", max_length=64
)
TYPES = ("graphite", "influxdb")  # Proxmox also knows opentelemetry: not offered here

# Options by name; `types` says which server types take them (Proxmox's plugin options).
OPTIONS: dict[str, tuple[Param, tuple[str, ...]]] = {
    "server": (Param("string", "server dns name or IP address", max_length=253), TYPES),
    "port": (Param("integer", "server network port", minimum=1, maximum=65536), TYPES),
    "disable": (Param("boolean", "Flag to disable the plugin.", optional=True), TYPES),
    "mtu": (
        Param(
            "integer",
            "MTU for metrics transmission over UDP",
            optional=True,
            default=1500,
            minimum=512,
            maximum=65536,
        ),  # fmt: skip
        TYPES,
    ),
    "timeout": (
        Param(
            "integer",
            "graphite TCP socket timeout (default=1)",
            optional=True,
            default=1,
            minimum=0,
        ),  # fmt: skip
        TYPES,
    ),
    "path": (
        Param(
            "string",
            "root graphite path (ex: proxmox.mycluster.mykey)",
            optional=True,
            pattern=r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*",
            max_length=255,
        ),  # fmt: skip
        ("graphite",),
    ),
    "proto": (
        Param(
            "string",
            "Protocol to send graphite data. TCP or UDP (default)",
            optional=True,
            enum=("udp", "tcp"),
        ),  # fmt: skip
        ("graphite",),
    ),
    "influxdbproto": (
        Param("string", "", optional=True, default="udp", enum=("udp", "http", "https")),
        ("influxdb",),
    ),
    "bucket": (Param("string", "The InfluxDB bucket/db.", optional=True), ("influxdb",)),
    "organization": (Param("string", "The InfluxDB organization.", optional=True), ("influxdb",)),
    "token": (
        Param("string", "The InfluxDB access token.", optional=True, secret=True),
        ("influxdb",),
    ),
    "max-body-size": (
        Param(
            "integer",
            "InfluxDB max-body-size in bytes.",
            optional=True,
            default=25000000,
            minimum=1,
        ),  # fmt: skip
        ("influxdb",),
    ),
    "api-path-prefix": (
        Param(
            "string",
            "An API path prefix inserted between '<host>:<port>/' and '/api2/'.",
            optional=True,
            pattern=r"[A-Za-z0-9_\-./]*",
        ),  # fmt: skip
        ("influxdb",),
    ),
    "verify-certificate": (
        Param(
            "boolean",
            "Set to 0 to disable certificate verification for https endpoints.",
            optional=True,
            default=1,
        ),  # fmt: skip
        ("influxdb",),
    ),
}
# Proxmox's OpenTelemetry plugin options: declared so they are refused with a reason
# (no server type here takes them) rather than as unknown.
for _name, _type in (
    ("otel-compression", "string"), ("otel-headers", "string"), ("otel-max-body-size", "integer"),
    ("otel-path", "string"), ("otel-protocol", "string"), ("otel-resource-attributes", "string"),
    ("otel-timeout", "integer"), ("otel-verify-ssl", "boolean"),
):  # fmt: skip
    OPTIONS[_name] = (Param(_type, "OpenTelemetry (not supported by corral).", optional=True), ())


def _optional(param: Param) -> Param:
    return Param(**{**param.__dict__, "optional": True})


CREATE_PARAMS = {
    "id": ID,
    "type": Param("string", "Plugin type.", enum=TYPES),
    **{k: p if k in ("server", "port") else _optional(p) for k, (p, _) in OPTIONS.items()},
}
UPDATE_PARAMS = {
    "id": ID,
    "digest": DIGEST,
    "delete": Param(
        "string",
        "A list of settings you want to delete.",
        optional=True,
        format="pve-configid-list",
        max_length=4096,
    ),  # fmt: skip
    **{k: _optional(p) for k, (p, _) in OPTIONS.items()},
}


def _check_types(kind: str, options: dict[str, Any]) -> None:
    errors = {
        k: f"option not allowed for type '{kind}'"
        if OPTIONS[k][1]
        else "OpenTelemetry servers are not supported by corral"
        for k in options
        if k in OPTIONS and kind not in OPTIONS[k][1]
    }
    server = options.get("server")
    if server is not None and not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", str(server)):
        errors["server"] = f"value '{server}' does not look like a valid address"
    if errors:
        raise ParamError(errors)


def _public(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != "token"}


def _get(ctx: Ctx, server_id: str) -> tuple[dict[str, Any], int]:
    kv = ctx.store.get(keys.metric_server(server_id))
    if kv is None:
        raise NotFound(f"metric server '{server_id}' does not exist")
    return kv.value, kv.mod_revision


@endpoint(
    "GET",
    "/cluster/metrics",
    perm=("/", ["Sys.Audit"]),
    description="Metrics index.",
)
def metrics_index(ctx: Ctx) -> list[dict[str, str]]:
    return [{"name": "server"}]


@endpoint(
    "GET",
    "/cluster/metrics/server",
    perm=("/", ["Sys.Audit"]),
    description="List configured metric servers.",
)
def list_servers(ctx: Ctx) -> list[dict[str, Any]]:
    out = []
    for kv in ctx.store.range(keys.METRIC_SERVERS):
        cfg = kv.value
        out.append(
            {
                "id": cfg["id"],
                "type": cfg["type"],
                "server": cfg["server"],
                "port": cfg["port"],
                "disable": int(cfg.get("disable", 0) or 0),
            }
        )
    return sorted(out, key=lambda s: s["id"])


@endpoint(
    "GET",
    "/cluster/metrics/server/{id}",
    params={"id": ID},
    perm=("/", ["Sys.Audit"]),
    description="Read metric server configuration.",
)
def read_server(ctx: Ctx, id: str) -> dict[str, Any]:
    cfg, _ = _get(ctx, id)
    return {**_public(cfg), "digest": config_digest(cfg)}


@endpoint(
    "POST",
    "/cluster/metrics/server/{id}",
    params=CREATE_PARAMS,
    perm=("/", ["Sys.Modify"]),
    description="Create a new external metric server config",
)
def create_server(ctx: Ctx, id: str, type: str, **options: Any) -> None:
    options = {k: v for k, v in options.items() if v is not None}
    _check_types(type, options)
    cfg = {"id": id, "type": type, **options}
    if not ctx.store.create(keys.metric_server(id), cfg):
        raise Conflict(f"metric server '{id}' already exists")


@endpoint(
    "PUT",
    "/cluster/metrics/server/{id}",
    params=UPDATE_PARAMS,
    perm=("/", ["Sys.Modify"]),
    description="Update metric server configuration.",
)
def update_server(
    ctx: Ctx, id: str, digest: str | None = None, delete: str | None = None, **options: Any
) -> None:
    cfg, rev = _get(ctx, id)
    if digest and digest != config_digest(cfg):
        raise Conflict("detected modified configuration - file changed by other user? Try again.")
    options = {k: v for k, v in options.items() if v is not None}
    removals = [d for d in re.split(r"[,;\s]+", delete or "") if d]
    errors = {k: "can't delete a required option" for k in removals if k in ("server", "port")}
    errors.update({k: "unknown option" for k in removals if k not in OPTIONS and k not in errors})
    if errors:
        raise ParamError(errors)
    _check_types(cfg["type"], options)
    new = {k: v for k, v in cfg.items() if k not in removals}
    new.update(options)
    ok = ctx.store.txn(
        [("mod", keys.metric_server(id), "==", rev)], [("put", keys.metric_server(id), new)]
    )
    if not ok:
        raise Conflict("metric server configuration changed concurrently - try again")


@endpoint(
    "DELETE",
    "/cluster/metrics/server/{id}",
    params={"id": ID},
    perm=("/", ["Sys.Modify"]),
    description="Remove Metric server.",
)
def delete_server(ctx: Ctx, id: str) -> None:
    _get(ctx, id)
    ctx.store.delete(keys.metric_server(id))
