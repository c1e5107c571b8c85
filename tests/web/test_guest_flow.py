"""The common guest flow through the real Flask app, real etcd and the task worker.

The driver is the in-tree fake (tests/web/fake_driver.py); real containers and
VMs go through the same endpoints in tests/lxc and tests/kvm.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask.testing import FlaskClient

from corral.cluster import keys
from corral.cluster.access import Access
from corral.cluster.store import Store
from corral.cluster.task_client import Tasks
from corral.cluster.tasks import TaskWorker
from corral.web.app import LOCAL_ROOT, NodeContext, create_app
from tests.util import wait_for
from tests.web.fake_driver import FakeDriver


class Api:
    def __init__(self, client: FlaskClient, env: dict[str, Any] | None = None) -> None:
        self.client = client
        self.env = env if env is not None else {LOCAL_ROOT: True}

    def call(self, method: str, path: str, **params: Any) -> Any:
        kw: dict[str, Any] = {"environ_base": self.env}
        if method in ("GET", "DELETE"):
            kw["query_string"] = params
        else:
            kw["data"] = params
        return self.client.open(f"/api2/json{path}", method=method, **kw)

    def ok(self, method: str, path: str, **params: Any) -> Any:
        r = self.call(method, path, **params)
        assert r.status_code == 200, f"{method} {path}: {r.status_code} {r.get_data(True)}"
        return r.get_json()["data"]

    def task(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        upid = self.ok(method, path, **params)
        assert upid.startswith("UPID:node")
        node = upid.split(":")[1]
        return wait_for(
            lambda: (
                (s := self.ok("GET", f"/nodes/{node}/tasks/{upid}/status"))["status"] == "stopped"
                and s
            ),
            20,
            0.02,
            what=upid,
        )


@pytest.fixture
def env(store: Store) -> Iterator[tuple[Api, FakeDriver, Store]]:
    driver = FakeDriver(node="node1", data_dir="/nonexistent")
    # The fake driver never touches storage; the flow only needs one to exist.
    services: dict[str, Any] = {"drivers": {"lxc": driver}, "volumes": object()}
    store.put(keys.node_info("node1"), {"node": "node1"})
    store.put(keys.node_alive("node1"), {"since": 0})
    worker = TaskWorker(store, "node1")
    worker.context = services
    worker.start()
    ctx = NodeContext(store, Access(store), Tasks(store), "node1", "/nonexistent", services)
    app = create_app(ctx)
    yield Api(app.test_client()), driver, store
    worker.stop()


def test_create_start_config_stop_destroy(env: tuple[Api, FakeDriver, Store]) -> None:
    api, driver, store = env
    status = api.task(
        "POST",
        "/nodes/node1/lxc",
        vmid=200,
        hostname="web",
        memory=256,
        ostemplate="local:vztmpl/x.tar.gz",
        password="s3cretpass",
        start=1,
    )
    assert status["exitstatus"] == "OK"
    cfg = api.ok("GET", "/nodes/node1/lxc/200/config")
    assert cfg["hostname"] == "web" and cfg["memory"] == 256
    assert "ostemplate" not in cfg and "password" not in cfg  # create-only, never stored
    assert cfg["rootfs"].startswith("local:subvol-200")
    assert len(cfg["digest"]) == 40
    current = api.ok("GET", "/nodes/node1/lxc/200/status/current")
    assert current["status"] == "running" and current["name"] == "web"
    listed = api.ok("GET", "/nodes/node1/lxc")
    assert [(g["vmid"], g["status"]) for g in listed] == [(200, "running")]
    rows = api.ok("GET", "/cluster/resources", type="vm")
    assert rows[0]["id"] == "lxc/200" and rows[0]["node"] == "node1"
    assert api.task("POST", "/nodes/node1/lxc/200/status/stop")["exitstatus"] == "OK"
    assert api.task("DELETE", "/nodes/node1/lxc/200")["exitstatus"] == "OK"
    assert store.get(keys.guest(200)) is None
    assert api.call("GET", "/nodes/node1/lxc/200/config").status_code == 404
    assert [c for c in driver.calls if c[1] == 200] == [
        ("create", 200),
        ("adopt", 200),  # every start first makes sure the node knows the guest
        ("start", 200),
        ("stop", 200),
        ("destroy", 200),
    ]


def test_running_guest_takes_live_keys_and_keeps_the_rest_pending(
    env: tuple[Api, FakeDriver, Store],
) -> None:
    api, driver, _ = env
    api.task("POST", "/nodes/node1/lxc", vmid=201, hostname="a", start=1)
    api.ok("PUT", "/nodes/node1/lxc/201/config", memory=1024, hostname="b")
    current = api.ok("GET", "/nodes/node1/lxc/201/config", current=1)
    assert current["memory"] == 1024 and current["hostname"] == "a"
    pending = {r["key"]: r for r in api.ok("GET", "/nodes/node1/lxc/201/pending")}
    assert pending["hostname"] == {"key": "hostname", "value": "a", "pending": "b"}
    assert "pending" not in pending["memory"]
    assert driver.guests[201]["config"]["memory"] == 1024  # applied to the running guest
    assert api.ok("GET", "/nodes/node1/lxc/201/config")["hostname"] == "b"
    api.task("POST", "/nodes/node1/lxc/201/status/reboot")  # pending applied on restart
    assert api.ok("GET", "/nodes/node1/lxc/201/config", current=1)["hostname"] == "b"
    assert api.ok("GET", "/nodes/node1/lxc/201/pending") and all(
        "pending" not in r for r in api.ok("GET", "/nodes/node1/lxc/201/pending")
    )


def test_stopped_guest_config_applies_at_once_and_delete(
    env: tuple[Api, FakeDriver, Store],
) -> None:
    api, _, _ = env
    api.task("POST", "/nodes/node1/lxc", vmid=202, hostname="a", cores=2)
    api.ok("PUT", "/nodes/node1/lxc/202/config", hostname="c", delete="cores")
    cfg = api.ok("GET", "/nodes/node1/lxc/202/config", current=1)
    assert cfg["hostname"] == "c" and "cores" not in cfg


def test_digest_detects_concurrent_change(env: tuple[Api, FakeDriver, Store]) -> None:
    api, _, _ = env
    api.task("POST", "/nodes/node1/lxc", vmid=203, hostname="a")
    old = api.ok("GET", "/nodes/node1/lxc/203/config")["digest"]
    api.ok("PUT", "/nodes/node1/lxc/203/config", memory=128, digest=old)
    r = api.call("PUT", "/nodes/node1/lxc/203/config", memory=256, digest=old)
    assert r.status_code == 409 and "modified configuration" in r.get_json()["message"]
    assert api.ok("GET", "/nodes/node1/lxc/203/config")["memory"] == 128


def test_bad_config_is_400_naming_each_key_and_creates_nothing(
    env: tuple[Api, FakeDriver, Store],
) -> None:
    api, driver, store = env
    r = api.call("POST", "/nodes/node1/lxc", vmid=204, memory=1, colour="red", net0="bridge=vmbr0")
    assert r.status_code == 400
    errors = r.get_json()["errors"]
    assert set(errors) == {"memory", "colour", "net0"}
    assert "missing key 'name'" in errors["net0"]
    assert store.get(keys.guest(204)) is None and ("create", 204) not in driver.calls
    r = api.call("POST", "/nodes/node1/lxc", vmid=99)
    assert r.status_code == 400 and "vmid" in r.get_json()["errors"]


def test_failed_create_leaves_no_record(env: tuple[Api, FakeDriver, Store]) -> None:
    api, driver, store = env
    driver.fail_create = True
    status = api.task("POST", "/nodes/node1/lxc", vmid=205, hostname="x")
    assert "unexpected end of archive" in status["exitstatus"]
    assert store.get(keys.guest(205)) is None
    driver.fail_create = False
    assert api.task("POST", "/nodes/node1/lxc", vmid=205, hostname="x")["exitstatus"] == "OK"


def test_duplicate_vmid_and_reservations(env: tuple[Api, FakeDriver, Store]) -> None:
    api, _, _ = env
    api.task("POST", "/nodes/node1/lxc", vmid=206)
    r = api.call("POST", "/nodes/node1/lxc", vmid=206)
    assert r.status_code == 409
    reserved = int(api.ok("POST", "/cluster/nextid", vmid=207))
    assert api.task("POST", "/nodes/node1/lxc", vmid=reserved)["exitstatus"] == "OK"


def test_operations_on_one_guest_queue_in_order(env: tuple[Api, FakeDriver, Store]) -> None:
    api, driver, _ = env
    api.task("POST", "/nodes/node1/lxc", vmid=208)
    upids = [
        api.ok("POST", f"/nodes/node1/lxc/208/status/{op}")
        for op in ("start", "stop", "start", "stop", "start")
    ]
    for upid in upids:
        wait_for(
            lambda u=upid: api.ok("GET", f"/nodes/node1/tasks/{u}/status")["status"] == "stopped",
            20,
        )
    statuses = [api.ok("GET", f"/nodes/node1/tasks/{u}/status")["exitstatus"] for u in upids]
    assert statuses == ["OK"] * 5  # no lock-timeout errors, each ran after the previous
    assert [c[0] for c in driver.calls if c[1] == 208 and c[0] != "adopt"][1:] == [
        "start",
        "stop",
        "start",
        "stop",
        "start",
    ]


def test_protection_and_running_refuse_destroy(env: tuple[Api, FakeDriver, Store]) -> None:
    api, _, store = env
    api.task("POST", "/nodes/node1/lxc", vmid=209, protection=1, start=1)
    r = api.call("DELETE", "/nodes/node1/lxc/209")
    assert r.status_code == 409 and "protection" in r.get_json()["message"]
    api.ok("PUT", "/nodes/node1/lxc/209/config", delete="protection")
    # Pending while running, so protection still holds until restart.
    api.task("POST", "/nodes/node1/lxc/209/status/stop")
    api.task("POST", "/nodes/node1/lxc/209/status/start")
    r = api.call("DELETE", "/nodes/node1/lxc/209")
    assert r.status_code == 409 and "running" in r.get_json()["message"]
    assert store.get(keys.guest(209)) is not None


def test_suspend_resume_and_status_ops_need_a_guest(env: tuple[Api, FakeDriver, Store]) -> None:
    api, driver, _ = env
    api.task("POST", "/nodes/node1/lxc", vmid=210, start=1)
    api.task("POST", "/nodes/node1/lxc/210/status/suspend")
    assert driver.guests[210]["status"] == "paused"
    api.task("POST", "/nodes/node1/lxc/210/status/resume")
    assert driver.guests[210]["status"] == "running"
    assert api.call("POST", "/nodes/node1/lxc/999/status/start").status_code == 404
    assert api.call("POST", "/nodes/node1/qemu/210/status/start").status_code in (404, 503)


def test_resize_grows_and_refuses_shrinking(env: tuple[Api, FakeDriver, Store]) -> None:
    api, _, _ = env
    api.task("POST", "/nodes/node1/lxc", vmid=211)
    assert (
        api.task("PUT", "/nodes/node1/lxc/211/resize", disk="rootfs", size="+2G")["exitstatus"]
        == "OK"
    )
    assert api.ok("GET", "/nodes/node1/lxc/211/config")["rootfs"].endswith("size=3G")
    r = api.call("PUT", "/nodes/node1/lxc/211/resize", disk="rootfs", size="1G")
    assert r.status_code == 400 and "shrinking" in r.get_json()["errors"]["size"]
    r = api.call("PUT", "/nodes/node1/lxc/211/resize", disk="mp7", size="+1G")
    assert r.status_code == 400


def test_a_locked_guest_refuses_changes(env: tuple[Api, FakeDriver, Store]) -> None:
    api, _, store = env
    api.task("POST", "/nodes/node1/lxc", vmid=212)
    store.update(keys.guest(212), lambda r: {**r, "lock": "backup"})
    r = api.call("PUT", "/nodes/node1/lxc/212/config", memory=64)
    assert r.status_code == 409 and "locked (backup)" in r.get_json()["message"]
    assert api.ok("GET", "/nodes/node1/lxc/212/config")["lock"] == "backup"
    time.sleep(0)  # keep the lock visible in the summary too
    assert api.ok("GET", "/nodes/node1/lxc")[0]["lock"] == "backup"


def test_quick_tasks_have_ended_when_their_post_answers(
    env: tuple[Api, FakeDriver, Store],
) -> None:
    """On a quiet node the POST answers once its task has ended (Tasks.settle), so a
    client polling once a second sees OK at its first poll. The answer is the UPID."""
    api, _driver, _store = env
    api.task("POST", "/nodes/node1/lxc", vmid=210, ostemplate="local:vztmpl/x.tar.gz")
    for method, path in [
        ("POST", "/nodes/node1/lxc/210/status/start"),
        ("POST", "/nodes/node1/lxc/210/status/stop"),
        ("DELETE", "/nodes/node1/lxc/210"),
    ]:
        upid = api.ok(method, path)
        assert upid.startswith("UPID:node1:")
        status = api.ok("GET", f"/nodes/node1/tasks/{upid}/status")
        assert (status["status"], status.get("exitstatus")) == ("stopped", "OK"), path


def test_a_nodes_guest_list_reads_no_guest_record_from_etcd(
    env: tuple[Api, FakeDriver, Store],
) -> None:
    """GET /nodes/N/lxc answers from the node's view (etcd has no per-node index: the
    store's answer was every guest record of the cluster), current as of the call:
    a guest another node recorded a moment ago is listed, one moved away is not."""
    api, _, store = env
    api.task("POST", "/nodes/node1/lxc", vmid=230, hostname="a")
    store.put(keys.node_info("node2"), {"node": "node2"})
    assert len(api.ok("GET", "/nodes/node1/lxc")) == 1  # the node's view has loaded
    reads: list[str] = []
    real_get, real_range_rev = store.get, store.range_rev

    def get(key: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(key)
        return real_get(key, *args, **kwargs)

    def range_rev(prefix: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(prefix)
        return real_range_rev(prefix, *args, **kwargs)

    rec = store.get(keys.guest(230)).value  # type: ignore[union-attr]
    store.put(keys.guest(231), {**rec, "vmid": 231, "config": {"hostname": "b"}})
    store.put(keys.guest(232), {**rec, "vmid": 232, "node": "node2"})
    store.put(keys.guest_status("node1", 231), {"status": "running", "mem": 5})
    store.get, store.range_rev = get, range_rev  # type: ignore[method-assign]
    try:
        listed = api.ok("GET", "/nodes/node1/lxc")
        assert api.ok("GET", "/nodes/node1/qemu") == []
    finally:
        del store.get, store.range_rev
    assert [(g["vmid"], g["name"], g["status"]) for g in listed] == [
        (230, "a", "stopped"),  # published by its create's end (no status round runs here)
        (231, "b", "running"),
    ]
    assert listed[1]["mem"] == 5
    assert [k for k in reads if k.startswith(("guests/", "gueststatus/"))] == []
