"""An OpenAPI 3 document generated from the same endpoint declarations.

It declares what the API really does, so generated clients and fuzzers
(schemathesis, tests/clients/test_schemathesis.py) can trust it: every error
status an operation can answer with Proxmox's error body, path parameters with
patterns valid values can be generated from, and for `additional` endpoints
the rest of their parameters (a guest type's config keys, every storage
type's options) from the endpoint's declared body schema.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from corral.cluster.schema import Param, Schema
from corral.web import api
from corral.web.api_core import VERSION

ERROR_BODY = {
    "type": "object",
    "properties": {
        "data": {"nullable": True},
        "message": {"type": "string"},
        "errors": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
ERRORS = {
    "400": "parameter verification failed",
    "401": "authentication failure",
    "403": "permission check failed",
    "404": "no such object (node, guest, storage, user...)",
    "405": "method not allowed on this path (the Allow header lists those that are)",
    "409": "conflict with the current state (exists, locked, running...)",
    "413": "request too large",
    "501": "not implemented",
    "503": "cluster state or the node is unavailable",
}
# Node-local calls for another node are forwarded there (corral.web.proxy).
FORWARDED = {"502": "the node this call belongs to did not answer"}


# Path parameters declared without a pattern, by name: what their handlers take.
_SEG = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,40}"
PATH_PATTERNS = {
    "upid": r"^UPID:[a-zA-Z0-9\-]{1,63}:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:[a-z]{1,16}:"
    r"[A-Za-z0-9_.\-]{0,20}:[A-Za-z0-9_.\-]{1,40}@[A-Za-z][A-Za-z0-9._\-]{1,31}:$",
    "volume": rf"^([a-zA-Z][a-zA-Z0-9_.\-]{{0,30}}[a-zA-Z0-9]:)?{_SEG}(/{_SEG}){{0,3}}$",
    "sid": r"^((vm|ct):)?[1-9][0-9]{2,8}$",
    "realm": r"^[A-Za-z][A-Za-z0-9._\-]{1,31}$",
}
ANY_NAME = r"^[A-Za-z][A-Za-z0-9_.\-]{0,39}$"


def _path_schema(name: str, param: Param) -> dict[str, Any]:
    schema = param.json_schema()
    if schema.get("type") == "string" and "pattern" not in schema and "enum" not in schema:
        schema["pattern"] = PATH_PATTERNS.get(name, ANY_NAME)
    return schema


def _responses(ep: api.Endpoint) -> dict[str, Any]:
    out: dict[str, Any] = {
        "200": {
            "description": "success",
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"data": ep.returns or {}}}
                }
            },
        }
    }
    codes = dict(ERRORS)
    if ep.public:
        codes.pop("403")
    if ep.local:
        codes.update(FORWARDED)
    for code, text in codes.items():
        out[code] = {"description": text, "content": {"application/json": {"schema": ERROR_BODY}}}
    return out


def _body(ep: api.Endpoint, props: dict[str, Param]) -> dict[str, Any]:
    rest = ep.body() if ep.body is not None else None
    merged = dict(props)
    if rest is not None:
        for name, param in rest.props.items():
            if name in ep.path_params:
                continue
            if name in merged:
                # The body schema's declaration is the precise one (`type` with its enum).
                merged[name] = replace(param, optional=merged[name].optional)
            else:
                merged[name] = replace(param, optional=True)
    schema = Schema(merged, ep.params.additional and rest is None).json_schema()
    for name, prop in schema["properties"].items():
        if name not in schema.get("required", ()):
            prop["nullable"] = True  # a JSON null means "not given"
    return {
        "content": {
            "application/x-www-form-urlencoded": {"schema": schema},
            "application/json": {"schema": schema},
        }
    }


def _operation(ep: api.Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": ep.description.split("\n")[0][:120],
        "description": ep.description,
        "operationId": f"{ep.method.lower()}{ep.path.replace('/', '_')}",
        "responses": _responses(ep),
    }
    parameters = []
    body_props: dict[str, Param] = {}
    for name, param in ep.params.props.items():
        schema = param.json_schema()
        if name in ep.path_params:
            schema = _path_schema(name, param)
            parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
        elif ep.method in ("GET", "DELETE"):
            parameters.append(
                {"name": name, "in": "query", "required": not param.optional, "schema": schema}
            )
        else:
            body_props[name] = param
    if parameters:
        op["parameters"] = parameters
    if ep.method in ("POST", "PUT") and (body_props or ep.body is not None):
        op["requestBody"] = _body(ep, body_props)
    if not ep.public:
        op["security"] = [{"ticket": []}, {"token": []}]
    return op


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in api.ENDPOINTS:
        paths.setdefault("/api2/json" + ep.path, {})[ep.method.lower()] = _operation(ep)
    return {
        "openapi": "3.0.3",
        "info": {"title": "corral API (Proxmox VE compatible)", "version": VERSION},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "ticket": {"type": "apiKey", "in": "cookie", "name": "PVEAuthCookie"},
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "PVEAPIToken=USER@REALM!TOKENID=SECRET",
                },
            }
        },
    }
