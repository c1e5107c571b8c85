"""Prometheus exposition: `GET /metrics` (also `/api2/prometheus`).

    curl -H 'Authorization: PVEAPIToken=prom@pve!scrape=SECRET' https://node1:8006/metrics

One scrape of any node answers for the whole cluster from the node's view of
etcd (the same rows as `/cluster/resources`), with prometheus-pve-exporter's
names and labels, followed by corral's own metrics of the answering node
(corral_*). Parameters:

- `cluster=0` speaks for the answering node alone: its node entry, its guests
  and its storages (for a Prometheus that scrapes every node);
- `node=0` leaves out the per-guest config figures (pve_onboot_status), as
  the exporter's `node` switch does.

Authentication is the API's (an API token, or a ticket cookie); what a
caller may not audit (`Sys.Audit`, `VM.Audit`, `Datastore.Audit`) is left out,
as from `/cluster/resources`. A node may also serve the same text without
authentication on a separate listener for a scrape network: the daemon option
`metrics_listen` (`corrald --metrics-listen ADDR:PORT`), plain HTTP, off by
default.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from typing import Any

import orjson
from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from corral.cluster import metrics_core
from corral.cluster.access import Identity
from corral.cluster.errors import CorralError, ParamError
from corral.web import api, api_backup_info, api_core, api_node_info, metrics_pve
from corral.web.app import NodeContext, authenticate, error_response, on_app

log = logging.getLogger(__name__)

PATHS = ("/metrics", "/api2/prometheus")
_FLAG = {"1": True, "true": True, "0": False, "false": False}


def _flag(args: Any, name: str, default: bool) -> bool:
    raw = args.get(name)
    if raw is None:
        return default
    if raw.lower() not in _FLAG:
        raise ParamError.one(name, f"type check ('boolean') failed - got '{raw}'")
    return _FLAG[raw.lower()]


def scrape(
    node: NodeContext, identity: Identity, *, cluster: bool = True, node_config: bool = True
) -> bytes:
    """The exposition text for `identity` (what it may audit)."""
    ctx = api.Ctx(
        node.store, node.access, node.tasks, node.node, identity, request, node.data_dir,
        node.services,
    )  # fmt: skip
    # The view hands its rows out serialized once (orjson Fragments): one dumps (a
    # concatenation) and one loads turn them back into dicts for every kind of row.
    rows = orjson.loads(orjson.dumps(api_core.resources(ctx)))
    status = api_core.cluster_status(ctx)
    if not ctx.can("/", ["Sys.Audit"]):  # the cluster entry needs it, a node entry its own
        status = [
            e for e in status
            if e["type"] == "node" and ctx.can(f"/nodes/{e['name']}", ["Sys.Audit"])
        ]  # fmt: skip
    if not cluster:
        rows = [r for r in rows if r.get("node") == node.node]
        status = [e for e in status if e["type"] != "node" or e["name"] == node.node]
    records = api_core.cluster_view(ctx).guests()  # in memory, no etcd read
    onboot: list[tuple[str, str, str, Any]] = []
    subscription = None
    if node_config:
        # The exporter's node collectors: onboot of the answering node's guests, and
        # its subscription.
        for rec in records:
            cfg = rec.get("config") or {}
            if rec.get("node") != node.node or "onboot" not in cfg:
                continue
            if ctx.can(f"/vms/{rec['vmid']}", ["VM.Audit"]):
                gid = f"{rec['type']}/{rec['vmid']}"
                onboot.append((gid, node.node, rec["type"], cfg["onboot"]))
        if ctx.can(f"/nodes/{node.node}", ["Sys.Audit"]):
            subscription = {**api_node_info.subscription(ctx, node.node), "node": node.node}
    not_backed_up = None
    if cluster and ctx.can("/", ["Sys.Audit"]):
        covered = api_backup_info.covered_vmids(ctx)
        not_backed_up = [
            f"{rec['type']}/{rec['vmid']}"
            for rec in sorted(records, key=lambda r: int(r["vmid"]))
            if int(rec["vmid"]) not in covered and not (rec.get("config") or {}).get("template")
        ]
    text = metrics_pve.exposition(
        status, rows, api_core.version(ctx), onboot, cluster_wide=cluster,
        not_backed_up=not_backed_up, subscription=subscription,
    )  # fmt: skip
    return text + generate_latest(metrics_core.REGISTRY)


def _answer(node: NodeContext, identity: Identity | None) -> Response:
    try:
        if identity is None:
            header = request.headers.get("Authorization", "")
            scheme, _, credentials = header.partition(" ")
            if scheme in ("PVEAPIToken", "Bearer") and credentials:
                # Prometheus's `authorization: {type: PVEAPIToken, credentials: ...}`
                # sends "TYPE CREDENTIALS"; the API itself wants "PVEAPIToken=...".
                identity = node.access.verify_token(credentials.strip())
            else:
                identity = authenticate(node, request)
        body = scrape(
            node,
            identity,
            cluster=_flag(request.args, "cluster", True),
            node_config=_flag(request.args, "node", True),
        )
    except CorralError as err:
        return error_response(err)
    except Exception:  # noqa: BLE001 - never a traceback to a scraper
        log.exception("metrics scrape failed")
        return Response("internal error\n", status=500, mimetype="text/plain")
    headers = {"Content-Type": CONTENT_TYPE_LATEST}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        # Prometheus asks for gzip; a 10,000-guest cluster's text shrinks ~15x.
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status=200, headers=headers)


@on_app
def _routes(app: Flask, node: NodeContext) -> None:
    def metrics() -> Response:
        return _answer(node, None)

    for path in PATHS:
        app.add_url_rule(path, f"metrics{path}", metrics, methods=["GET"])

    @app.before_request
    def _started() -> None:
        g.corral_started = time.monotonic()

    @app.after_request
    def _observed(response: Response) -> Response:
        started = g.get("corral_started")
        if started is not None and request.path.startswith("/api2/json"):
            metrics_core.record_api(
                request.method, response.status_code, time.monotonic() - started
            )
        return response

    listen = (node.services.get("config") or {}).get("metrics_listen")
    if listen:
        _start_listener(node, str(listen))


def _start_listener(node: NodeContext, listen: str) -> None:
    """Plain HTTP, no authentication, /metrics only: for a dedicated scrape network."""
    from cheroot import wsgi

    host, _, port = listen.rpartition(":")
    plain = Flask("corral-metrics")

    @plain.route("/metrics")
    def metrics() -> Response:
        return _answer(node, Identity("root@pam"))

    server = wsgi.Server(
        (host.strip("[]") or "0.0.0.0", int(port)), plain, numthreads=2, server_name=node.node
    )
    server.prepare()
    threading.Thread(target=server.serve, name="metrics-http", daemon=True).start()
    daemon = node.services.get("daemon")
    if daemon is not None:
        daemon.servers.append(server)  # stopped with the node's other servers
    log.info("unauthenticated metrics listener on http://%s/metrics", listen)
