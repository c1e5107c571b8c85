"""corral's own metrics (not prometheus-pve-exporter's): tasks, API latency, etcd
round trips and leader changes, HA failovers, migration durations.

They live in one prometheus-client registry per process, so a scrape of a node
shows what that node's daemon did. Other modules record through the small
functions below and never touch prometheus_client themselves:

    from corral.cluster import metrics_core
    metrics_core.record_failover("vm:100", from_node="node1", to_node="node2")

Task counts and durations (migrations included) are recorded by the task
worker itself.

Every function is cheap (a lock and an add) and never raises, so a caller's
hot path cannot fail because of metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

# Buckets cover a fast CT start (tens of ms) up to a long backup (an hour).
TASK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ETCD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
MIGRATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600)

TASKS = Counter(
    "corral_tasks",
    "Tasks this node's worker finished, by task type and outcome (ok or error).",
    ["type", "status"],
    registry=REGISTRY,
)
TASK_SECONDS = Histogram(
    "corral_task_duration_seconds",
    "Run time of the tasks this node's worker finished, by task type.",
    ["type"],
    buckets=TASK_BUCKETS,
    registry=REGISTRY,
)
TASKS_RUNNING = Gauge(
    "corral_tasks_running", "Tasks running on this node's worker now.", registry=REGISTRY
)
API_SECONDS = Histogram(
    "corral_api_request_duration_seconds",
    "Time this node took to answer API requests, by method and status class.",
    ["method", "code"],
    buckets=API_BUCKETS,
    registry=REGISTRY,
)
ETCD_SECONDS = Histogram(
    "corral_etcd_request_duration_seconds",
    "Round trip of this node's etcd calls (ok or error).",
    ["result"],
    buckets=ETCD_BUCKETS,
    registry=REGISTRY,
)
ETCD_LEADER_CHANGES = Counter(
    "corral_etcd_leader_changes",
    "Changes of the etcd leader seen by this node (sampled every status round).",
    registry=REGISTRY,
)
ETCD_HAS_LEADER = Gauge(
    "corral_etcd_has_leader",
    "1 when the etcd member this node talks to knows a leader.",
    registry=REGISTRY,
)
HA_FAILOVERS = Counter(
    "corral_ha_failovers",
    "HA guests recovered onto another node by the HA manager running here.",
    ["from_node", "to_node"],
    registry=REGISTRY,
)
MIGRATION_SECONDS = Histogram(
    "corral_migration_duration_seconds",
    "Guest migrations run by this node (the source): task start to guest on its target.",
    ["type", "result"],
    buckets=MIGRATION_BUCKETS,
    registry=REGISTRY,
)
# Migration task types (Proxmox's names) -> guest type: their durations feed the above.
MIGRATION_TASKS = {"qmigrate": "qemu", "vzmigrate": "lxc"}
RRD_UPDATE_SECONDS = Histogram(
    "corral_rrd_update_duration_seconds",
    "Time one history round (every node, guest and storage of the cluster) took.",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30),
    registry=REGISTRY,
)
STATUS_ROUND_SECONDS = Histogram(
    "corral_status_round_duration_seconds",
    "Time one round of measuring this node's guests (and publishing them) took.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
STATUS_ROUNDS = Counter(
    "corral_status_rounds",
    "Rounds of this node's guest figures, by outcome: written (something moved, or the "
    "periodic refresh) or unchanged (nothing written to etcd).",
    ["result"],
    registry=REGISTRY,
)
METRIC_PUSHES = Counter(
    "corral_metric_server_pushes",
    "Pushes to external metric servers, by server id and result.",
    ["server", "result"],
    registry=REGISTRY,
)


def _safe(fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - metrics must never break the caller
            log.debug("metric update failed", exc_info=True)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_safe
def record_task(task_type: str, exitstatus: str, seconds: float) -> None:
    """A task ended with `exitstatus` ("OK" or the error) after `seconds`."""
    result = "ok" if exitstatus == "OK" else "error"
    TASKS.labels(task_type, result).inc()
    TASK_SECONDS.labels(task_type).observe(max(0.0, seconds))
    if task_type in MIGRATION_TASKS:
        MIGRATION_SECONDS.labels(MIGRATION_TASKS[task_type], result).observe(max(0.0, seconds))


@_safe
def task_running(delta: int) -> None:
    TASKS_RUNNING.inc(delta)


@_safe
def record_api(method: str, status: int, seconds: float) -> None:
    API_SECONDS.labels(method, f"{status // 100}xx").observe(seconds)


@_safe
def record_etcd(seconds: float, ok: bool) -> None:
    ETCD_SECONDS.labels("ok" if ok else "error").observe(seconds)


@_safe
def record_failover(sid: str = "", *, from_node: str = "", to_node: str = "") -> None:
    """The HA manager recovered service `sid` (e.g. "vm:100") from a fenced node.
    `sid` is accepted for the caller's convenience but not used as a label: one
    series per guest would grow without bound."""
    HA_FAILOVERS.labels(from_node, to_node).inc()


@_safe
def record_push(server: str, ok: bool) -> None:
    METRIC_PUSHES.labels(server, "ok" if ok else "error").inc()


class LeaderWatch:
    """Counts etcd leader changes from successive status samples."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._lock = threading.Lock()

    @_safe
    def sample(self, leader: int) -> None:
        with self._lock:
            ETCD_HAS_LEADER.set(1 if leader else 0)
            if leader and self._last is not None and leader != self._last:
                ETCD_LEADER_CHANGES.inc()
            if leader:
                self._last = leader


LEADER = LeaderWatch()


class Timer:
    """`with Timer() as t: ...; t.seconds` (monotonic)."""

    def __enter__(self) -> Timer:
        self.start = time.monotonic()
        self.seconds = 0.0
        return self

    def __exit__(self, *_: Any) -> None:
        self.seconds = time.monotonic() - self.start
