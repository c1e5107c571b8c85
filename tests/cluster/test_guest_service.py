"""The guest service called directly, as HA and backup jobs do: no HTTP in between.

Two nodes' task workers run in this process against one real etcd, with the
in-tree fake driver (tests/web/fake_driver.py); tests/lxc and tests/kvm drive
the real drivers through the same service via the API.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest

from corral.cluster import keys
from corral.cluster.errors import Conflict, NotFound, ParamError
from corral.cluster.guest_driver import DriverInfo
from corral.cluster.guest_service import GuestService, privilege_for
from corral.cluster.migration import decide
from corral.cluster.store import Store
from corral.cluster.task_client import Tasks
from tests.web.fake_driver import FakeDriver, fake_node

USER = "root@pam"


@pytest.fixture
def svc(store: Store) -> Iterator[tuple[GuestService, dict[str, FakeDriver]]]:
    drivers: dict[str, FakeDriver] = {}
    workers = []
    for name in ("node1", "node2"):
        drivers[name], worker = fake_node(store, name)
        workers.append(worker)
    store.put(keys.storage("shared"), {"storage": "shared", "type": "dir", "path": "/srv/x",
                                       "shared": 1})  # fmt: skip
    service = GuestService(store, Tasks(store), node="node1", drivers={"lxc": drivers["node1"]})
    yield service, drivers
    for w in workers:
        w.stop()


def _ok(svc: GuestService, upid: str) -> None:
    status = svc.wait(upid, 20)
    assert status["exitstatus"] == "OK", status


def test_create_start_migrate_destroy(svc: tuple[GuestService, dict[str, FakeDriver]]) -> None:
    service, drivers = svc
    vmid = 710
    _ok(service, service.create("lxc", vmid, {"rootfs": "shared:1", "memory": 64},
                                user=USER, node="node1", start=True))  # fmt: skip
    assert drivers["node1"].guests[vmid]["status"] == "running"
    assert service.record(vmid)["lock"] is None
    assert service.volume_users(f"shared:subvol-{vmid}-disk-0") == [vmid]
    assert vmid in service.storage_users("shared")
    with pytest.raises(Conflict):
        service.create("lxc", vmid, {"rootfs": "shared:1"}, user=USER, node="node1")

    service.store.put(keys.guest_status("node1", vmid), {"status": "running"})
    with pytest.raises(ParamError) as err:  # a CT cannot live-migrate: restart mode it is
        service.migrate(vmid, user=USER, target="node2")
    assert "restart" in err.value.errors
    _ok(service, service.migrate(vmid, user=USER, target="node2", restart=True))
    assert service.record(vmid)["node"] == "node2"
    assert drivers["node2"].guests[vmid]["status"] == "running"
    with pytest.raises(NotFound):
        service.start(vmid, user=USER, node="node1")  # the API's path names the old node

    _ok(service, service.stop(vmid, user=USER))
    service.store.put(keys.guest_status("node2", vmid), {"status": "stopped"})
    _ok(service, service.destroy(vmid, user=USER))
    with pytest.raises(NotFound):
        service.record(vmid)
    assert service.volume_users(f"shared:subvol-{vmid}-disk-0") == []


def test_config_change_digest_and_lock(svc: tuple[GuestService, dict[str, FakeDriver]]) -> None:
    service, _ = svc
    vmid = 711
    _ok(service, service.create("lxc", vmid, {"rootfs": "shared:1"}, user=USER, node="node1"))
    asked: list[set[str]] = []
    assert service.change_config(vmid, {"memory": 128}, user=USER, authorize=asked.append) is None
    assert asked == [{"VM.Config.Memory"}]
    assert service.record(vmid)["config"]["memory"] == 128
    with pytest.raises(Conflict):
        service.change_config(vmid, {"cores": 2}, user=USER, digest="0" * 40)
    with pytest.raises(ParamError) as err:
        service.change_config(vmid, {}, user=USER, delete="nosuchkey")
    assert "nosuchkey" in err.value.errors
    with pytest.raises(ParamError) as err:
        service.stop(vmid, user="someone@pve", skiplock=True)
    assert "skiplock" in err.value.errors


def test_migration_mode_follows_the_driver_capabilities() -> None:
    ct = DriverInfo(type="lxc")
    vm = dataclasses.replace(ct, type="qemu", can_live_migrate=True)
    off = {"running": False, "online": False, "restart": False, "copies": {}}
    assert decide(ct, 1, **off) == "offline"
    assert decide(vm, 1, **{**off, "running": True, "online": True}) == "live"
    assert decide(ct, 1, **{**off, "running": True, "restart": True}) == "restart"
    for info, params, bad in (
        (ct, {"online": True}, "online"),  # no live migration for this driver
        (ct, {}, "restart"),
        (vm, {}, "online"),
        (vm, {"online": True, "copies": {"scsi0": "local:vm-1-disk-0"}}, "online"),
    ):
        with pytest.raises(ParamError) as err:
            decide(info, 1, **{**off, "running": True, **params})  # type: ignore[arg-type]
        assert bad in err.value.errors, (info, params)


def test_privileges_by_config_key() -> None:
    assert privilege_for("net3") == "VM.Config.Network"
    assert privilege_for("scsi0") == "VM.Config.Disk"
    assert privilege_for("network") == "VM.Config.Options"  # not a net<N> key
    assert privilege_for("hostname") == "VM.Config.Options"


def test_the_service_flow_on_the_memory_store_and_a_virtual_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """create -> start -> migrate -> destroy through the service, as HA calls it: no
    etcd, no thread, no real sleep; the task workers run as virtual-clock callbacks."""
    from tests.cluster.test_guest_flow_sim import Sim

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds} s of real time")

    monkeypatch.setattr(time, "sleep", no_sleep)
    sim = Sim()
    service = GuestService(sim.store, sim.tasks, node="node1",
                           drivers={"lxc": sim.drivers["node1"]})  # fmt: skip

    def done(upid: str) -> None:
        assert sim.clock.run_until(lambda: sim.tasks.status(upid)["status"] == "stopped")
        assert sim.tasks.status(upid)["exitstatus"] == "OK", sim.tasks.log_lines(upid)

    try:
        vmid = 720
        done(service.create("lxc", vmid, {"rootfs": "shared:1"}, user=USER, node="node1",
                            start=True))  # fmt: skip
        rec = service.record(vmid)
        assert rec["created"] == int(sim.clock.time()) and rec["lock"] is None
        assert sim.drivers["node1"].guests[vmid]["status"] == "running"
        with pytest.raises(ParamError):
            service.migrate(vmid, user=USER, target="node2")  # running: restart needed
        done(service.migrate(vmid, user=USER, target="node2", restart=True))
        assert service.record(vmid)["node"] == "node2"
        assert sim.drivers["node2"].guests[vmid]["status"] == "running"
        done(service.shutdown(vmid, user=USER, timeout=5))
        done(service.destroy(vmid, user=USER))
        with pytest.raises(NotFound):
            service.record(vmid)
    finally:
        for w in sim.workers:
            w.stop()
        sim.store.close()
    assert sim.clock.errors == []


class Viewed:
    """Two simulated nodes (in-memory store, virtual clock); node1's service reads
    through its cluster view. After `count()`, `reads` lists the keys read from the
    store (`get` is the store's own, uncounted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from corral.cluster.cluster_view import ClusterView
        from tests.cluster.test_guest_flow_sim import Sim

        self.sim = Sim()
        self.view = ClusterView(self.sim.store).start()
        self.service = GuestService(self.sim.store, self.sim.tasks, node="node1",
                                    drivers={"lxc": self.sim.drivers["node1"]},
                                    services={"cluster_view": self.view})  # fmt: skip
        self.reads: list[str] = []
        self.get = self.sim.store.get
        self._monkeypatch = monkeypatch

    def count(self) -> None:
        def counted(key: str) -> Any:
            self.reads.append(key)
            return self.get(key)

        self._monkeypatch.setattr(self.sim.store, "get", counted)

    def done(self, upid: str) -> None:
        sim = self.sim
        assert sim.clock.run_until(lambda: sim.tasks.status(upid)["status"] == "stopped")
        assert sim.tasks.status(upid)["exitstatus"] == "OK", sim.tasks.log_lines(upid)

    def written_elsewhere(self, key: str, value: Any) -> None:
        """`key` put by another node: this node's view has not seen it yet."""
        before = self.sim.store.written_revision
        self.sim.store.put(key, value)
        self.sim.store.written_revision = before


@pytest.fixture
def viewed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Viewed]:
    v = Viewed(monkeypatch)
    try:
        yield v
    finally:
        v.view.stop()
        for w in v.sim.workers:
            w.stop()
        v.sim.store.close()
    assert v.sim.clock.errors == []


def test_a_config_change_starts_from_the_view_and_a_stale_copy_costs_one_read(
    viewed: Viewed,
) -> None:
    """A config change reads the guest from the node's view and writes it with one
    compare-and-swap; a copy another node's write made stale fails that compare, and
    the change is made on the store's record (its digest checked there)."""
    from corral.cluster import guests

    sim, service, reads, get = viewed.sim, viewed.service, viewed.reads, viewed.get
    vmid = 712
    viewed.done(service.create("lxc", vmid, {"rootfs": "shared:1"}, user=USER, node="node1"))
    sim.clock.advance(1)  # the view has the created guest
    viewed.count()
    assert service.change_config(vmid, {"memory": 128}, user=USER) is None
    assert [k for k in reads if k == keys.guest(vmid)] == []
    assert get(keys.guest(vmid)).value["config"]["memory"] == 128

    # Another node changes the guest; this node's view has not seen it yet.
    sim.clock.advance(1)
    rec = get(keys.guest(vmid)).value
    rec["config"] = {**rec["config"], "memory": 512}
    viewed.written_elsewhere(keys.guest(vmid), rec)
    reads.clear()
    digest = guests.digest(rec["config"])  # of the store's config, not the view's
    assert service.change_config(vmid, {"cores": 2}, user=USER, digest=digest) is None
    assert [k for k in reads if k == keys.guest(vmid)] == [keys.guest(vmid)]
    config = get(keys.guest(vmid)).value["config"]
    assert (config["memory"], config["cores"]) == (512, 2)
    with pytest.raises(Conflict):  # the digest of a config that is no more
        service.change_config(vmid, {"cores": 3}, user=USER, digest=digest)


def test_a_guest_elsewhere_is_acted_on_from_the_view_and_an_offline_node_is_refused(
    viewed: Viewed,
) -> None:
    """A power operation or a migration of a guest on another node reads the guest and
    its node's liveness from the node's view (a migration its target's record too): no
    etcd read. A "no" is confirmed on etcd: a node that is offline is refused, one the
    view still thinks offline but that is back is not."""
    from corral.cluster.errors import Unavailable

    sim, service, reads, done = viewed.sim, viewed.service, viewed.reads, viewed.done
    vmid = 713
    done(service.create("lxc", vmid, {"rootfs": "shared:1"}, user=USER, node="node2"))
    sim.clock.advance(1)  # the view has the created guest
    viewed.count()
    upid = service.start(vmid, user=USER)
    asked = list(reads)  # before the task runs: its own reads are its node's
    done(upid)
    assert [k for k in asked if k.startswith(("nodes/", "guests/"))] == []
    mark = len(reads)
    upid = service.migrate(vmid, user=USER, target="node1", restart=True)
    asked = reads[mark:]
    done(upid)
    # (The target's liveness is read by the migration's plan, as its task does.)
    assert [k for k in asked if k.startswith(("nodeinfo/", "guests/", "nodes/node2"))] == []
    assert sim.drivers["node1"].guests[vmid]["status"] == "running"

    done(service.create("lxc", vmid + 1, {"rootfs": "shared:1"}, user=USER, node="node2"))
    # node2 goes offline: refused, the view's "no" confirmed on etcd.
    sim.store.delete(keys.node_alive("node2"))
    sim.clock.advance(1)
    with pytest.raises(Unavailable, match="node 'node2' is offline"):
        service.start(vmid + 1, user=USER)
    # Back on etcd but not yet in the view (another node's write): accepted on
    # etcd's word, at one read.
    viewed.written_elsewhere(keys.node_alive("node2"), {"since": 1})
    reads.clear()
    done(service.start(vmid + 1, user=USER))
    assert [k for k in reads if k.startswith("nodes/")] == [keys.node_alive("node2")]
