"""Directory indexes for every inner path, as Proxmox serves them.

`GET /`, `GET /cluster`, `GET /nodes/{node}/lxc/{vmid}/status`... list the
next path segments below them (`[{"subdir": "..."}]`). They are derived from
the declared endpoints once all endpoint modules are loaded, so a new
endpoint appears in its parent's index without further declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.cluster.schema import Param, Schema
from corral.web.api import ENDPOINTS, Ctx, Endpoint


def _children(endpoints: list[Endpoint]) -> dict[str, set[str]]:
    """Each inner path template -> the literal names one level below it."""
    out: dict[str, set[str]] = {}
    for ep in endpoints:
        parts = [p for p in ep.path.split("/") if p]
        for depth in range(len(parts)):
            prefix = "/" + "/".join(parts[:depth])
            if "{volume}" in prefix:
                break  # a volume ID spans slashes: nothing below it is an index
            child = parts[depth]
            out.setdefault(prefix, set())
            if not child.startswith("{"):
                # `{vmid}` and the like are listed by the collection's own GET.
                out[prefix].add(child)
    return out


def _handler(children: list[str]) -> Callable[..., list[dict[str, str]]]:
    def index(ctx: Ctx, **_: Any) -> list[dict[str, str]]:
        return [{"subdir": name} for name in children]

    return index


def declare(endpoints: list[Endpoint] = ENDPOINTS) -> None:
    """Add a GET index for each inner path that has none (idempotent)."""
    have = {ep.path for ep in endpoints if ep.method == "GET"}
    known: dict[str, Param] = {}
    for ep in endpoints:
        for name in ep.path_params:
            known.setdefault(name, ep.params.props[name])
    for prefix, names in sorted(_children(list(endpoints)).items()):
        if prefix in have or not names:
            continue
        params = {n: known[n] for n in ep_params(prefix) if n in known}
        endpoints.append(
            Endpoint(
                "GET",
                prefix,
                _handler(sorted(names)),
                Schema(dict(params)),
                None,
                "Directory index.",
            )
        )


def ep_params(path: str) -> list[str]:
    return [p[1:-1] for p in path.split("/") if p.startswith("{") and p.endswith("}")]
