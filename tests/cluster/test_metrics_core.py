"""corral's own counters: what the task worker, the store, the HA manager record."""

from __future__ import annotations

import uuid

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from corral.cluster import metrics_core
from corral.cluster.etcd_embed import EmbeddedEtcd
from corral.cluster.store import Store


def value(name: str, **labels: str) -> float:
    text = generate_latest(metrics_core.REGISTRY).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def test_tasks_failovers_and_leader_changes_are_counted() -> None:
    ok = value("corral_tasks_total", type="bench-t", status="ok")
    metrics_core.record_task("bench-t", "OK", 0.2)
    metrics_core.record_task("bench-t", "command failed", 1.0)
    assert value("corral_tasks_total", type="bench-t", status="ok") == ok + 1
    assert value("corral_tasks_total", type="bench-t", status="error") >= 1
    assert value("corral_task_duration_seconds_count", type="bench-t") >= 2
    before = value("corral_migration_duration_seconds_count", type="lxc", result="ok")
    metrics_core.record_task("vzmigrate", "OK", 2.2)
    assert value("corral_migration_duration_seconds_count", type="lxc", result="ok") == before + 1

    base = value("corral_ha_failovers_total", from_node="na", to_node="nb")
    metrics_core.record_failover("vm:100", from_node="na", to_node="nb")
    assert value("corral_ha_failovers_total", from_node="na", to_node="nb") == base + 1

    watch = metrics_core.LeaderWatch()
    changes = value("corral_etcd_leader_changes_total")
    for leader in (7, 7, 0, 7, 9, 9):  # 0: no leader known for a moment, not a change
        watch.sample(leader)
    assert value("corral_etcd_leader_changes_total") == changes + 1
    assert value("corral_etcd_has_leader") == 1


def test_etcd_calls_are_timed(etcd: EmbeddedEtcd) -> None:
    store = Store([etcd.endpoint], prefix=f"/corral-test/{uuid.uuid4().hex}/")
    try:
        before = value("corral_etcd_request_duration_seconds_count", result="ok")
        store.put("metrics-probe", {"x": 1})
        store.get("metrics-probe")
        assert value("corral_etcd_request_duration_seconds_count", result="ok") >= before + 2
        store.delete_prefix("")
    finally:
        store.close()


def test_a_broken_label_never_reaches_the_caller() -> None:
    metrics_core.record_task(None, "OK", "not a number")  # type: ignore[arg-type]
