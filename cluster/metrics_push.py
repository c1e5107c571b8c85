"""Pushing figures to external metric servers (Graphite, InfluxDB), as pvestatd does.

Each node pushes its own figures every PUSH_INTERVAL: its node status, its
guests' status and its storages', in the formats of Proxmox's
PVE::Status::Graphite and PVE::Status::InfluxDB, so dashboards built for a
Proxmox cluster's metric server read corral's unchanged:

    graphite: proxmox.nodes.node1.cpu 0.05 1700000000
              proxmox.lxc.100.mem 12345678 1700000000
    influxdb: system,object=nodes,host=node1 cpu=0.05,... 1700000000000000000
              system,object=lxc,vmid=100,nodename=node1,host=ct100 cpu=0.01,... <ns>

The servers are configured cluster-wide through /cluster/metrics/server
(records under keys.METRIC_SERVERS). Every send has a timeout; a failing
server is logged and counted (corral_metric_server_pushes) and never stalls
the status loop.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

from corral.cluster import guest_status, keys, metrics_core

log = logging.getLogger(__name__)

PUSH_INTERVAL = 10.0
DEFAULT_PORTS = {"graphite": 2003, "influxdb": 8089}
_NUMBER = re.compile(r"[+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?")
_SKIP = {"vmid", "time", "pid"}  # identifiers, not figures


# -- what a node pushes ------------------------------------------------------------------


def node_figures(status: dict[str, Any]) -> dict[str, Any]:
    """The node's published status, shaped like pvestatd's node data."""
    host = status.get("host") or {}
    load = host.get("loadavg") or []
    return {
        "uptime": status.get("uptime"),
        "cpustat": {
            "cpu": status.get("cpu"), "cpus": status.get("maxcpu"), "wait": host.get("wait"),
        },
        "memory": host.get("memory") or {"used": status.get("mem"), "total": status.get("maxmem")},
        "swap": host.get("swap"),
        "rootfs": host.get("rootfs"),
        "loadavg": {"avg1": load[0], "avg5": load[1], "avg15": load[2]} if len(load) == 3 else None,
        "nics": {"host": {"receive": host.get("netin"), "transmit": host.get("netout")}},
    }  # fmt: skip


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return value
    return None


# -- Graphite plaintext ------------------------------------------------------------------


def graphite_lines(prefix: str, data: dict[str, Any], ctime: int) -> Iterator[str]:
    """PVE::Status::Graphite's assemble(): nested keys joined by '.', numbers only."""
    for key in sorted(data):
        value = data[key]
        if value is None or key in _SKIP:
            continue
        path = f"{prefix}.{str(key).replace('.', '-')}"
        if isinstance(value, dict):
            yield from graphite_lines(path, value, ctime)
        elif (text := _scalar(value)) is not None:
            yield f"{path} {text} {ctime}\n"


# -- InfluxDB line protocol --------------------------------------------------------------


def _influx_value(value: Any) -> str | None:
    number = _scalar(value)
    if number is not None:
        return number
    if isinstance(value, str) and value != "":
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return None


def _tag(value: Any) -> str:
    return re.sub(r"([ ,=])", r"\\\1", str(value))


def influx_lines(
    data: dict[str, Any],
    ctime_ns: int,
    tags: str,
    measurement: str | None = None,
    instance: str | None = None,
) -> Iterator[str]:
    """PVE::Status::InfluxDB's build_influxdb_payload(): top-level figures into
    `system`, each nested hash into a measurement of its own name."""
    values: dict[str, str] = {}
    for key in sorted(data):
        value = data[key]
        if value is None or key in ("time", "pid"):
            continue
        if isinstance(value, dict):
            if measurement is None:
                yield from influx_lines(value, ctime_ns, tags, key)
            elif instance is None:
                yield from influx_lines(value, ctime_ns, tags, measurement, key)
        elif (text := _influx_value(value)) is not None:
            values[str(key).replace(" ", "\\ ").replace(",", "\\,")] = text
    if not values:
        return
    tagstring = tags + (f",instance={_tag(instance)}" if instance is not None else "")
    fields = ",".join(f"{k}={v}" for k, v in sorted(values.items()))
    yield f"{measurement or 'system'},{tagstring} {fields} {ctime_ns}\n"


# -- one push ----------------------------------------------------------------------------


def payload(
    kind: str, cfg: dict[str, Any], node: str, node_status: dict[str, Any] | None,
    guests: dict[str, dict[str, Any]], storages: dict[str, dict[str, Any]], ctime: int,
) -> list[str]:  # fmt: skip
    """Every line one node sends to one server."""
    lines: list[str] = []
    if kind == "graphite":
        root = cfg.get("path") or "proxmox"
        if node_status:
            lines += graphite_lines(f"{root}.nodes.{node}", node_figures(node_status), ctime)
        for vmid, entry in sorted(guests.items()):
            gtype = entry.get("type", "qemu")
            lines += graphite_lines(f"{root}.{gtype}.{vmid}", entry, ctime)
        for sid, entry in sorted(storages.items()):
            lines += graphite_lines(f"{root}.storages.{node}.{sid}", entry, ctime)
        return lines
    ns = ctime * 1_000_000_000
    if node_status:
        lines += influx_lines(node_figures(node_status), ns, f"object=nodes,host={_tag(node)}")
    for vmid, entry in sorted(guests.items()):
        gtype = entry.get("type", "qemu")
        tags = f"object={gtype},vmid={vmid},nodename={_tag(node)}"
        if entry.get("name"):
            tags += f",host={_tag(entry['name'])}"
        lines += influx_lines(entry, ns, tags)
    for sid, entry in sorted(storages.items()):
        lines += influx_lines(entry, ns, f"object=storages,nodename={_tag(node)},host={_tag(sid)}")
    return lines


def _batches(lines: Iterable[str], limit: int) -> Iterator[bytes]:
    """Lines packed into chunks of at most `limit` bytes (UDP datagrams, HTTP bodies)."""
    buf = b""
    for line in lines:
        raw = line.encode()
        if buf and len(buf) + len(raw) > limit:
            yield buf
            buf = b""
        buf += raw
    if buf:
        yield buf


def send(cfg: dict[str, Any], lines: list[str]) -> None:
    """Deliver `lines` to the server `cfg` describes; raises OSError on failure."""
    server, kind = cfg["server"], cfg["type"]
    port = int(cfg.get("port") or DEFAULT_PORTS[kind])
    timeout = float(cfg.get("timeout", 1) or 1)
    mtu = int(cfg.get("mtu") or 1500)
    if kind == "graphite":
        if cfg.get("proto", "udp") == "tcp":
            with socket.create_connection((server, port), timeout=timeout) as sock:
                sock.sendall("".join(lines).encode())
            return
        _udp(server, port, lines, mtu - 50)
        return
    proto = cfg.get("influxdbproto", "udp")
    if proto == "udp":
        _udp(server, port, lines, mtu - 50)
        return
    prefix = (cfg.get("api-path-prefix") or "").strip("/")
    query = {"precision": "ns"}
    if cfg.get("organization"):
        query["org"] = cfg["organization"]
    query["bucket"] = cfg.get("bucket") or "proxmox"
    host = f"[{server}]" if ":" in server else server
    base = f"{proto}://{host}:{port}/" + (f"{prefix}/" if prefix else "")
    url = f"{base}api/v2/write?{urllib.parse.urlencode(query)}"
    context = None
    if proto == "https" and not int(cfg.get("verify-certificate", 1)):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    for body in _batches(lines, int(cfg.get("max-body-size") or 25_000_000)):
        req = urllib.request.Request(url, data=body, method="POST")
        req.add_header("Content-Type", "text/plain; charset=utf-8")
        if cfg.get("token"):
            req.add_header("Authorization", f"Token {cfg['token']}")
        with urllib.request.urlopen(req, timeout=max(timeout, 1.0), context=context) as resp:
            if resp.status >= 300:
                raise OSError(f"InfluxDB answered {resp.status}")


def _udp(server: str, port: int, lines: list[str], limit: int) -> None:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for chunk in _batches(lines, max(limit, 256)):
            sock.sendto(chunk, (server, port))


def push_round(store: Any, node: str, services: dict[str, Any], now: float | None = None) -> int:
    """One push of this node's figures to every enabled server; returns servers reached."""
    servers = [kv.value for kv in store.range(keys.METRIC_SERVERS)]
    servers = [s for s in servers if not int(s.get("disable", 0) or 0)]
    if not servers:
        return 0
    ctime = int(time.time() if now is None else now)
    node_status = store.get_value(keys.node_status(node))
    guests = services.get("status_doc") or guest_status.node_live(store, node)
    storages = store.get_value(keys.storage_status(node)) or {}
    reached = 0
    for cfg in servers:
        try:
            send(cfg, payload(cfg["type"], cfg, node, node_status, guests, storages, ctime))
            reached += 1
            metrics_core.record_push(cfg["id"], True)
        except (OSError, ValueError) as err:
            metrics_core.record_push(cfg["id"], False)
            log.warning("metric server %s (%s:%s): %s", cfg["id"], cfg["server"],
                        cfg.get("port"), err)  # fmt: skip
    return reached


_busy = threading.Lock()


def status_hook(node: Any) -> None:
    """Registered with the daemon's status loop: a push every PUSH_INTERVAL, off-thread."""
    services = node.services
    now = time.monotonic()
    if now - services.get("push_last_round", -1e9) < PUSH_INTERVAL:
        return
    if not _busy.acquire(blocking=False):
        return
    services["push_last_round"] = now

    def run() -> None:
        try:
            push_round(node.store, node.name, services)
        except Exception as err:  # noqa: BLE001 - retried next round
            log.warning("metric push failed: %s", err)
        finally:
            _busy.release()

    threading.Thread(target=run, name="metric-push", daemon=True).start()
