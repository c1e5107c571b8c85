"""/cluster/ha through the real Flask app, and HA driving a guest through the guest
service (fake driver, real task worker) on etcd and on the in-memory store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI
from pve_exporter.collector.cluster import HighAvailabilityStateMetric

from corral.cluster import keys
from corral.cluster.guest_service import GuestService
from corral.cluster.ha.service import HAService, NodeEnv
from corral.cluster.ha.watchdog import WatchdogClient
from corral.cluster.store import Store
from corral.cluster.task_client import Tasks
from tests.util import Corrald, wait_for
from tests.web.fake_driver import FakeDriver
from tests.web.test_guest_flow import Api
from tests.web.test_guest_flow import env as env  # noqa: F401 - the fixture

Env = tuple[Api, FakeDriver, Store]


def _ct(api: Api, vmid: int) -> None:
    status = api.task(
        "POST",
        "/nodes/node1/lxc",
        vmid=vmid,
        hostname=f"ha{vmid}",
        memory=64,
        ostemplate="local:vztmpl/x.tar.gz",
    )
    assert status["exitstatus"] == "OK"


def test_resources_crud_and_bad_input(env: Env) -> None:
    api, _, _ = env
    _ct(api, 200)
    assert api.call("POST", "/cluster/ha/resources", sid="ct:999").status_code == 400
    r = api.call("POST", "/cluster/ha/resources", sid="vm:200")
    assert r.status_code == 400 and "sid" in r.get_json()["errors"]  # 200 is a CT
    r = api.call("POST", "/cluster/ha/resources", sid="ct:200", state="running")
    assert r.status_code == 400 and "state" in r.get_json()["errors"]
    r = api.call("POST", "/cluster/ha/resources", sid="ct:200", max_restart="x")
    assert r.status_code == 400 and "max_restart" in r.get_json()["errors"]
    api.ok("POST", "/cluster/ha/resources", sid="ct:200", state="stopped", comment="db")
    assert api.call("POST", "/cluster/ha/resources", sid="ct:200").status_code == 409
    got = api.ok("GET", "/cluster/ha/resources/ct:200")
    assert got["state"] == "stopped" and got["max_restart"] == 1 and got["comment"] == "db"
    api.ok("PUT", "/cluster/ha/resources/ct:200", max_relocate=3, delete="comment")
    got2 = api.ok("GET", "/cluster/ha/resources/ct:200")
    assert got2["max_relocate"] == 3 and "comment" not in got2
    r = api.call("PUT", "/cluster/ha/resources/ct:200", digest=got["digest"], max_restart=2)
    assert r.status_code == 409  # the digest of an older version
    assert [x["sid"] for x in api.ok("GET", "/cluster/ha/resources", type="ct")] == ["ct:200"]
    assert api.ok("GET", "/cluster/ha/resources", type="vm") == []
    api.ok("DELETE", "/cluster/ha/resources/ct:200")
    assert api.call("GET", "/cluster/ha/resources/ct:200").status_code == 404


def test_rules_crud_validation_and_purge(env: Env) -> None:
    api, _, _ = env
    _ct(api, 201)
    _ct(api, 202)
    api.ok("POST", "/cluster/ha/resources", sid="ct:201", state="stopped")
    api.ok("POST", "/cluster/ha/resources", sid="ct:202", state="stopped")
    bad = [
        ({"rule": "r1", "type": "node-affinity", "resources": "ct:201", "nodes": "no de"}, "nodes"),
        (
            {"rule": "r1", "type": "node-affinity", "resources": "x:1", "nodes": "node1"},
            "resources",
        ),
        ({"rule": "r1", "type": "resource-affinity", "resources": "ct:201"}, "affinity"),
        (
            {
                "rule": "r1",
                "type": "resource-affinity",
                "resources": "ct:201",
                "affinity": "negative",
            },
            "resources",
        ),
        ({"rule": "r1", "type": "colocation", "resources": "ct:201"}, "type"),
    ]
    for params, name in bad:
        r = api.call("POST", "/cluster/ha/rules", **params)
        assert r.status_code == 400 and name in r.get_json()["errors"], (params, r.get_json())
    api.ok(
        "POST", "/cluster/ha/rules", rule="prefer", type="node-affinity",
        resources="ct:201,ct:202", nodes="node1:2,node2", strict=1,
    )  # fmt: skip
    api.ok(
        "POST", "/cluster/ha/rules", rule="together", type="resource-affinity",
        resources="ct:201,ct:202", affinity="positive",
    )  # fmt: skip
    r = api.call(
        "POST", "/cluster/ha/rules", rule="apart", type="resource-affinity",
        resources="ct:201,ct:202", affinity="negative",
    )  # fmt: skip
    assert r.status_code == 400  # both together and apart
    rule = api.ok("GET", "/cluster/ha/rules/prefer")
    assert rule["nodes"] == "node1:2,node2" and rule["strict"] == 1
    assert [x["rule"] for x in api.ok("GET", "/cluster/ha/rules", type="node-affinity")] == [
        "prefer"
    ]
    api.ok("PUT", "/cluster/ha/rules/prefer", nodes="node2", delete="strict")
    assert api.ok("GET", "/cluster/ha/rules/prefer")["strict"] == 0
    assert api.call("PUT", "/cluster/ha/rules/prefer", type="resource-affinity").status_code == 400
    api.ok("DELETE", "/cluster/ha/resources/ct:201")  # purge: out of both rules
    assert api.ok("GET", "/cluster/ha/rules/prefer")["resources"] == "ct:202"
    assert api.call("GET", "/cluster/ha/rules/together").status_code == 404  # one left: gone
    assert api.call("POST", "/cluster/ha/resources/ct:202/migrate", node="nope").status_code == 400


@pytest.fixture
def ha(env: Env) -> Iterator[tuple[Api, FakeDriver, Store, HAService]]:
    api, driver, store = env
    svc = GuestService(store, Tasks(store), node="node1", drivers={"lxc": driver})
    watchdog = WatchdogClient()
    service = HAService(NodeEnv(store, "node1", svc, watchdog, lambda: True))
    service.start()
    yield api, driver, store, service
    service.stop()
    watchdog.close()


def _current(api: Api) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in api.ok("GET", "/cluster/ha/status/current")}


def test_ha_starts_and_stops_a_guest_through_the_guest_service(
    ha: tuple[Api, FakeDriver, Store, HAService],
) -> None:
    api, driver, store, service = ha
    _ct(api, 210)
    assert driver.guests[210]["status"] == "stopped"
    api.ok("POST", "/cluster/ha/resources", sid="ct:210")
    wait_for(lambda: driver.guests[210]["status"] == "running", 20, what="HA start")
    wait_for(lambda: _current(api)["service:ct:210"]["state"] == "started", 10)
    # the LRM publishes its state at the end of the round that started the guest
    wait_for(lambda: _current(api)["lrm:node1"]["status"].startswith("node1 (active"), 10)
    cur = _current(api)
    assert cur["master"]["node"] == "node1" and cur["quorum"]["quorate"] == 1
    assert cur["lrm:node1"]["status"].startswith("node1 (active")
    assert api.ok("GET", "/nodes/node1/lxc/210/status/current")["ha"] == {
        "managed": 1,
        "state": "started",
        "request_state": "started",
    }
    # The HA states come from the node's in-memory view (started by the first
    # request): a request reads no HA key.
    api.ok("GET", "/cluster/resources", type="node")
    ha_reads: list[str] = []
    me = threading.current_thread()
    real_get, real_range_rev = store.get, store.range_rev

    def get(key: str, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is me and key.startswith("ha/"):
            ha_reads.append(key)
        return real_get(key, *args, **kwargs)

    def range_rev(prefix: str, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is me and prefix.startswith("ha/"):
            ha_reads.append(prefix)
        return real_range_rev(prefix, *args, **kwargs)

    store.get, store.range_rev = get, range_rev  # type: ignore[method-assign]
    try:
        rows = {r["id"]: r for r in api.ok("GET", "/cluster/resources", type="vm")}
    finally:
        del store.get, store.range_rev
    assert rows["lxc/210"]["hastate"] == "started" and ha_reads == []
    # prometheus-pve-exporter's own pve_ha_state metric, fed with these rows
    metric = HighAvailabilityStateMetric()
    for row in api.ok("GET", "/cluster/resources"):
        metric.add_metric_from_resource(row)
    on = {(s.labels["id"], s.labels["state"]) for s in metric.samples if s.value}
    assert ("lxc/210", "started") in on and ("node/node1", "online") in on
    full = api.ok("GET", "/cluster/ha/status/manager_status")
    assert full["manager_status"]["service_status"]["ct:210"]["node"] == "node1"
    assert full["lrm_status"]["node1"]["state"] == "active"
    api.ok("PUT", "/cluster/ha/resources/ct:210", state="stopped")
    wait_for(lambda: driver.guests[210]["status"] == "stopped", 20, what="HA stop")
    wait_for(lambda: _current(api)["service:ct:210"]["state"] == "stopped", 10)
    assert store.get(keys.guest(210)) is not None


def test_proxmoxer_reads_and_writes_ha(corrald: Corrald) -> None:
    api = ProxmoxAPI(
        "127.0.0.1",
        port=corrald.port,
        user="admin@pve",
        password=corrald.password,
        verify_ssl=corrald.ca,
    )
    assert {"id": "resources"} in api.cluster.ha.get()
    api.cluster.ha.rules.post(rule="pin", type="node-affinity", resources="vm:4242", nodes="node1")
    assert [r["rule"] for r in api.cluster.ha.rules.get()] == ["pin"]
    api.cluster.ha.rules("pin").delete()
    assert api.cluster.ha.resources.get() == []
    current = wait_for(
        lambda: [r for r in api.cluster.ha.status.current.get() if r["type"] == "master"],
        20,
        what="an HA master",
    )
    assert current[0]["node"] == "node1"


def test_recovery_move_is_counted_as_a_failover(env: Env) -> None:
    """The manager re-homes a guest's record only to recover it from a fenced node:
    the node env counts that in corral_ha_failovers_total (metrics_core)."""
    from tests.cluster.test_metrics_core import value

    api, driver, store = env
    _ct(api, 211)
    svc = GuestService(store, Tasks(store), node="node1", drivers={"lxc": driver})
    watchdog = WatchdogClient()
    try:
        node_env = NodeEnv(store, "node1", svc, watchdog, lambda: True)
        before = value("corral_ha_failovers_total", from_node="node1", to_node="node2")
        node_env.move_guest("ct:211", "node2")
    finally:
        watchdog.close()
    assert store.get_value(keys.guest(211))["node"] == "node2"
    assert value("corral_ha_failovers_total", from_node="node1", to_node="node2") == before + 1
