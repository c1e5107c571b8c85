"""An OpenAPI 3 document generated from the same endpoint declarations."""

from __future__ import annotations

from typing import Any

from corral.web import api
from corral.web.api_core import VERSION


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in api.ENDPOINTS:
        op: dict[str, Any] = {
            "summary": ep.description.split("\n")[0][:120],
            "description": ep.description,
            "operationId": f"{ep.method.lower()}{ep.path.replace('/', '_')}",
            "responses": {
                "200": {
                    "description": "success",
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "properties": {"data": ep.returns or {}}}
                        }
                    },
                },
                "400": {"description": "parameter verification failed"},
                "401": {"description": "authentication failure"},
                "403": {"description": "permission check failed"},
                "503": {"description": "cluster state unavailable"},
            },
        }
        parameters = []
        body_props = {}
        for name, param in ep.params.props.items():
            schema = param.json_schema()
            if name in ep.path_params:
                parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
            elif ep.method in ("GET", "DELETE"):
                parameters.append(
                    {"name": name, "in": "query", "required": not param.optional, "schema": schema}
                )
            else:
                body_props[name] = param
        if parameters:
            op["parameters"] = parameters
        if body_props:
            from corral.cluster.schema import Schema

            body = Schema(body_props).json_schema()
            op["requestBody"] = {
                "content": {
                    "application/x-www-form-urlencoded": {"schema": body},
                    "application/json": {"schema": body},
                }
            }
        if not ep.public:
            op["security"] = [{"ticket": []}, {"token": []}]
        paths.setdefault("/api2/json" + ep.path, {})[ep.method.lower()] = op
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
