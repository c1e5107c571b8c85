"""The Flask application: authentication, dispatch, and errors mapped in one place.

Requests under /api2/json/ are authenticated first (so every path but login
answers 401 without credentials), then routed to a declared endpoint,
validated against its schema, permission-checked and run. Responses use
Proxmox's envelope; errors carry the status, a reason phrase and, for bad
parameters, `{"errors": {param: reason}}`. Unexpected exceptions are logged
and answered as a bare 500 without any traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any
from urllib.parse import unquote

import orjson
from flask import Flask, Request, Response, request

from corral.cluster.access import Identity
from corral.cluster.errors import CorralError, ParamError, Unauthorized
from corral.cluster.node_services import LOCAL_ROOT, NodeContext  # defined in cluster: the daemon
from corral.cluster.schema import track_ignored
from corral.web import api
from corral.web.proxy import PROXIED, forward

log = logging.getLogger(__name__)

# Modules declaring endpoints. Missing optional ones (a package not built yet)
# are skipped with a warning rather than taking the API down.
ENDPOINT_MODULES = [
    "corral.web.api_core",
    "corral.web.api_access",
    "corral.web.api_tasks",
    "corral.web.api_storage",
    "corral.web.api_guests",
    "corral.web.api_migrate",
    "corral.web.api_cluster",
    "corral.web.console",
    "corral.web.api_snapshots",
    "corral.web.api_clones",
    "corral.web.api_console",
    "corral.web.api_access_more",
    "corral.web.api_realms",
    "corral.web.api_feed",
    "corral.web.api_backup_info",
    "corral.web.api_node_info",
    "corral.web.api_ha",
    "corral.web.api_backup",
    "corral.web.api_backup_jobs",
    "corral.web.api_metrics",
    "corral.web.api_rrd",
    "corral.web.api_metric_servers",
    "corral.web.api_node_system",
    "corral.web.api_storage_download",
]

WRITE_METHODS = {"POST", "PUT", "DELETE"}


def load_endpoint_modules() -> None:
    for name in ENDPOINT_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                log.debug("endpoint module %s not present", name)
            else:
                log.warning("endpoint module %s unavailable: %s", name, err)
    from corral.web import api_indexes, pve_compat

    pve_compat.declare(api.ENDPOINTS)
    api_indexes.declare(api.ENDPOINTS)


def json_response(body: Any, status: int = 200, reason: str | None = None) -> Response:
    resp = Response(
        orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        mimetype="application/json",
    )
    if reason:
        # Proxmox clients (proxmoxer) show the status line's reason phrase.
        resp.status = f"{status} {_reason(reason)}"
    return resp


def _reason(text: str) -> str:
    return (
        " ".join(text.replace("\r", " ").replace("\n", " ").split())[:200]
        .encode("latin-1", "replace")
        .decode("latin-1")
    )


def error_response(err: CorralError) -> Response:
    body: dict[str, Any] = {"data": None, "message": err.message}
    if err.errors:
        body["errors"] = err.errors
    return json_response(body, err.status, err.message)


def authenticate(node: NodeContext, req: Request) -> Identity:
    if req.environ.get(LOCAL_ROOT):
        return Identity("root@pam")
    header = req.headers.get("Authorization", "")
    if header.startswith("PVEAPIToken="):
        return node.access.verify_token(header[len("PVEAPIToken=") :])
    cookie = req.cookies.get("PVEAuthCookie")
    if cookie:
        userid = node.access.verify_ticket(unquote(cookie))
        ident = Identity(userid, via_cookie=True)
        if req.method in WRITE_METHODS:
            node.access.verify_csrf(req.headers.get("CSRFPreventionToken"), userid)
        return ident
    raise Unauthorized("authentication failure")


def request_params(req: Request) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in req.args:
        values = req.args.getlist(key)
        params[key] = values[-1]
    if req.method in ("POST", "PUT"):
        if req.is_json:
            body = req.get_json(silent=True)
            if not isinstance(body, dict):
                raise ParamError(message="request body must be a JSON object")
            params.update({k: v for k, v in body.items() if v is not None})
        else:
            for key in req.form:
                params[key] = req.form.getlist(key)[-1]
    return params


audit = logging.getLogger("corral.audit")


def dispatch(node: NodeContext, path: str) -> Response:
    node.store.reset_stale()
    with node.access.request_scope():  # the caller's user record: one read per request
        response = _dispatch(node, path)
    response.headers.setdefault("X-Corral-Node", node.node)  # who answered
    if node.store.last_read_stale:
        # Without quorum, reads come from the local member and may be stale.
        response.headers["X-Corral-Stale"] = "1"
    if request.method in WRITE_METHODS:
        # Every change is audited: who, what, and how it ended (never the parameters:
        # they may hold passwords).
        who = getattr(request, "corral_identity", "") or "-"
        audit.info(
            "audit user=%s method=%s path=/%s status=%s remote=%s",
            who,
            request.method,
            path,
            response.status_code,
            request.remote_addr or "local",
        )
    return response


def _dispatch(node: NodeContext, path: str) -> Response:
    track_ignored()  # this request's no-op Proxmox parameters, for its task's log
    try:
        try:
            ep, path_params = api.route(request.method, path)
        except CorralError:
            authenticate(node, request)  # unknown paths too answer 401 to strangers
            allow = api.allowed_methods(path)
            if allow:
                return method_not_allowed(allow)
            raise
        if not ep.public:
            ident = authenticate(node, request)
            request.corral_identity = ident.name  # type: ignore[attr-defined]
        else:
            ident = Identity("")
        target = path_params.get("node")
        if ep.local and target and target != node.node and not request.headers.get(PROXIED):
            return forward(node, target, request, local_root=bool(request.environ.get(LOCAL_ROOT)))
        ctx = api.Ctx(
            node.store,
            node.access,
            node.tasks,
            node.node,
            ident,
            request,
            node.data_dir,
            node.services,
        )
        if ep.raw:
            raw_params = {k: unquote(v) for k, v in path_params.items()}
            result = ep.handler(ctx, **raw_params)
            if isinstance(result, Response):
                return result
            return json_response({"data": result})
        raw = request_params(request)
        for key, value in path_params.items():
            raw[key] = unquote(value)
        params = ep.params.validate(raw)
        if isinstance(ep.perm, tuple):
            perm_path, privs = ep.perm
            ctx.check(perm_path.format(**params), privs)
        elif callable(ep.perm):
            ep.perm(ctx, **params)
        result = ep.handler(ctx, **params)
        if isinstance(result, Response):
            return result
        body: dict[str, Any] = {"data": result}
        return json_response(body)
    except CorralError as err:
        if err.status >= 500 and not isinstance(err, api.NotImplementedPath):
            log.warning("%s %s: %s", request.method, path, err)
        return error_response(err)
    except Exception:  # noqa: BLE001 - never a traceback to the client
        log.exception("unexpected error in %s %s", request.method, path)
        return json_response({"data": None, "message": "internal error"}, 500, "internal error")


def method_not_allowed(allow: list[str]) -> Response:
    """405 naming the methods the path does serve (RFC 9110 requires the Allow header)."""
    resp = json_response({"data": None, "message": "method not allowed"}, 405, "method not allowed")
    resp.headers["Allow"] = ", ".join(allow)
    return resp


def create_app(node: NodeContext) -> Flask:
    load_endpoint_modules()
    app = Flask(__name__, static_folder=None, root_path=os.path.dirname(__file__))
    app.config["MAX_CONTENT_LENGTH"] = None

    # No automatic OPTIONS: every other method answers 405 with the path's real Allow.
    methods = ["GET", "POST", "PUT", "DELETE"]
    opts = {"methods": methods, "provide_automatic_options": False}

    @app.route("/api2/json/", defaults={"path": ""}, **opts)
    @app.route("/api2/json/<path:path>", **opts)
    def api_entry(path: str) -> Response:
        return dispatch(node, path)

    @app.route("/api2/openapi.json", methods=["GET"], provide_automatic_options=False)
    def openapi_doc() -> Response:
        from corral.web.openapi import document

        return json_response(document())

    @app.errorhandler(404)
    def not_found(_: Any) -> Response:
        return json_response({"data": None, "message": "not found"}, 404, "not found")

    @app.errorhandler(405)
    def not_allowed(_: Any) -> Response:
        prefix = "/api2/json"
        path = request.path[len(prefix) :] if request.path.startswith(prefix) else None
        if request.path == "/api2/openapi.json":
            return method_not_allowed(["GET"])
        return method_not_allowed(api.allowed_methods(path) if path is not None else [])

    @app.errorhandler(400)
    def bad_request(_: Any) -> Response:
        return json_response(
            {"data": None, "message": "malformed request"}, 400, "malformed request"
        )

    @app.errorhandler(413)
    def too_large(_: Any) -> Response:
        return json_response(
            {"data": None, "message": "request too large"}, 413, "request too large"
        )

    for hook in _app_hooks:
        hook(app, node)
    return app


_app_hooks: list[Any] = []


def on_app(hook: Any) -> Any:
    """Register `hook(app, node)` to add non-API routes (console, /metrics)."""
    _app_hooks.append(hook)
    return hook


def static_dir() -> str:
    return os.path.join(os.path.dirname(__file__), "static")
