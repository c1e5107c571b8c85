"""Declaring API endpoints: once, with their parameters and permission.

    from corral.web.api import endpoint, Ctx
    from corral.cluster.schema import NODE, Param

    @endpoint("GET", "/nodes/{node}/storage", params={
        "node": NODE,
        "content": Param("string", "Only list stores supporting this content type.",
                         optional=True),
    }, perm=("/storage", ["Datastore.Audit"]), description="Get status for all datastores.")
    def list_node_storage(ctx: Ctx, node: str, content: str | None = None) -> list[dict]:
        ...

The handler receives the validated, coerced parameters as keyword arguments
(path parameters included) and returns the value that becomes `{"data": ...}`.
Raise corral.cluster.errors exceptions for errors; they become the right
status with Proxmox's error shape in one place (corral.web.app).

`perm` is a (path, privileges) tuple where the path may contain `{param}`
placeholders filled from the parameters, a callable `perm(ctx, **params)`
doing its own checks through `ctx.check(...)`, or None for "any
authenticated user" (the handler may still filter what it returns).
`public=True` means no authentication (only the login endpoint).
`raw=True` handlers get `ctx.request` untouched (uploads) and may return a
Flask response.

Every module that declares endpoints must be imported by corral.web.app.
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from corral.cluster.errors import NotImplementedPath
from corral.cluster.schema import Param, Schema

if TYPE_CHECKING:
    from flask import Request

    from corral.cluster.access import Access, Identity
    from corral.cluster.store import Store
    from corral.cluster.task_client import Tasks


@dataclass
class Endpoint:
    method: str
    path: str
    handler: Callable[..., Any]
    params: Schema
    perm: tuple[str, list[str]] | Callable[..., None] | None
    description: str = ""
    public: bool = False
    raw: bool = False
    returns: dict[str, Any] | None = None
    local: bool = False
    # For `additional` endpoints: the schema their handler validates the rest against
    # (a guest type's config keys, a storage type's options), for usage and OpenAPI.
    body: Callable[[], Schema] | None = None
    regex: re.Pattern[str] = field(init=False)
    path_params: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(re.findall(r"\{(\w+)\}", self.path))
        self.path_params = names
        pattern = re.escape(self.path)
        for name in names:
            # A volume ID (`local:100/vm-100-disk-0.raw`) holds slashes, and clients send
            # them raw or %2F-encoded (decoded before routing): let it take the rest.
            value = ".+?" if name == "volume" else "[^/]+"
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{value})")
        self.regex = re.compile(f"^{pattern}$")
        for name in names:
            self.params.props.setdefault(name, Param("string", f"The {name}."))


ENDPOINTS: list[Endpoint] = []


def endpoint(
    method: str,
    path: str,
    *,
    params: dict[str, Param] | None = None,
    perm: tuple[str, list[str]] | Callable[..., None] | None = None,
    description: str = "",
    public: bool = False,
    raw: bool = False,
    returns: dict[str, Any] | None = None,
    additional: bool = False,
    local: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`additional=True`: undeclared parameters reach the handler unvalidated in
    **kwargs (guest config keys, validated by the driver's own schema).
    `local=True`: the call needs the resources of the node named by the path's
    {node}; other nodes forward it there (corral.web.proxy)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ENDPOINTS.append(
            Endpoint(
                method.upper(),
                path,
                fn,
                Schema(dict(params or {}), additional),
                perm,
                description or (fn.__doc__ or "").strip(),
                public,
                raw,
                returns,
                local,
            )
        )
        return fn

    return register


def _literals(ep: Endpoint) -> tuple[int, int]:
    return (sum(1 for p in ep.path.split("/") if p and not p.startswith("{")), len(ep.path))


def _resource(clean: str) -> str | None:
    """The path template a concrete path belongs to: of the templates matching it, the
    one with the most literal segments (`/access/tfa/{userid}/new-totp` over
    `/access/tfa/{userid}/{id}`; `.../{volume}/snapshot` over `.../{volume}`)."""
    best: Endpoint | None = None
    for ep in _candidates(clean):
        if ep.regex.match(clean) and (best is None or _literals(ep) > _literals(best)):
            best = ep
    return None if best is None else best.path


class _Index:
    """ENDPOINTS by what a path shows at once, so a request tries a handful of
    templates instead of all of them (~500): by first segment and segment count;
    a template with a `{volume}` (which may hold slashes) by first segment alone.
    And each (method, template) to its endpoint."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.size = len(endpoints)
        self.fixed: dict[tuple[str, int], list[Endpoint]] = {}
        self.open: dict[str, list[Endpoint]] = {}
        self.by_method: dict[tuple[str, str], Endpoint] = {}
        for ep in endpoints:
            segments = ep.path.strip("/").split("/")
            if "volume" in ep.path_params:
                self.open.setdefault(segments[0], []).append(ep)
            else:
                self.fixed.setdefault((segments[0], len(segments)), []).append(ep)
            self.by_method.setdefault((ep.method, ep.path), ep)


_index: _Index | None = None


def _current_index() -> _Index:
    global _index
    index = _index
    if index is None or index.size != len(ENDPOINTS):  # modules register as they load
        index = _index = _Index(list(ENDPOINTS))
    return index


def _candidates(clean: str) -> list[Endpoint]:
    index = _current_index()
    segments = clean.strip("/").split("/")
    first = segments[0]
    return index.fixed.get((first, len(segments)), []) + index.open.get(first, [])


def route(method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
    """The endpoint for `method path`, and its path parameters; 501 as Proxmox otherwise
    (the dispatcher answers 405 when the path has other methods: allowed_methods)."""
    clean = "/" + path.strip("/")
    template = _resource(clean)
    ep = None if template is None else _current_index().by_method.get((method, template))
    if ep is None:
        raise NotImplementedPath(method=method, path=clean)
    match = ep.regex.match(clean)
    assert match is not None
    return ep, match.groupdict()


def allowed_methods(path: str) -> list[str]:
    """The methods served at `path` (for 405's Allow header)."""
    template = _resource("/" + path.strip("/"))
    return sorted({ep.method for ep in ENDPOINTS if ep.path == template})


@dataclass
class Ctx:
    """What a handler may use. `services` holds the node's drivers, volumes..."""

    store: Store
    access: Access
    tasks: Tasks
    node: str
    identity: Identity
    request: Request
    data_dir: str
    services: MutableMapping[str, Any]

    @property
    def user(self) -> str:
        return self.identity.name

    def check(self, path: str, privs: list[str], *, any_of: bool = False) -> None:
        self.access.check(self.identity, path, privs, any_of=any_of)

    def can(self, path: str, privs: list[str], *, any_of: bool = False) -> bool:
        """Like check() but answers; resolved once per path within one request, from one
        read of the ACL (listing 10,000 guests must not cost 20,000 etcd reads)."""
        cache = self.__dict__.setdefault("_privs", {})
        have = cache.get(path)
        if have is None:
            snap = self.__dict__.get("_snapshot")
            if snap is None:
                snap = self.__dict__["_snapshot"] = self.access.snapshot(self.identity)
            have = cache[path] = self.access.privileges(self.identity, path, snapshot=snap)
        return any(p in have for p in privs) if any_of else all(p in have for p in privs)

    def can_each_below(self, prefix: str, privs: list[str], *, any_of: bool = False) -> bool | None:
        """`can()` for every path below `prefix` ("/vms/") at once, when the ACL names
        no path below it (each then resolves like any other); None when it does.

        Listing 10,000 guests then costs one privilege check, not 10,000."""
        self.can(prefix, privs, any_of=any_of)  # reads the ACL snapshot once
        entries = self.__dict__["_snapshot"][0]
        if any(str(e.get("path", "")).startswith(prefix) for e in entries):
            return None
        if prefix == "/vms/" and self.__dict__["_snapshot"][2]:
            return None  # guests in pools may get more from their pool's ACL
        return self.can(prefix + "0", privs, any_of=any_of)

    def submit(
        self,
        *,
        node: str,
        type: str,
        id: str,
        args: dict[str, Any] | None = None,
        serial: str | None = None,
    ) -> str:
        """Record a task for `node`'s worker; returns its UPID (the API's answer)."""
        return self.tasks.submit(
            node=node, type=type, id=id, user=self.user, args=args, serial=serial
        )
