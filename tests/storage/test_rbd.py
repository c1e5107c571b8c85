"""RBD beyond the contract, on the session's real Ceph: what QEMU gets, bases, namespaces."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from corral.cluster.errors import Conflict, NotSupported, ParamError
from corral.storage import rbd as rbd_mod
from corral.storage.rbd import RbdPlugin
from corral.storage.volumes import Volumes
from tests.storage import blockio
from tests.storage.conftest import RUN, rbd_config

MiB = 1 << 20


@pytest.fixture(scope="module")
def rbd_cfg(ceph: Any) -> Iterator[dict[str, Any]]:
    cfg = rbd_config(ceph, "images,rootdir")
    yield cfg
    RbdPlugin().deactivate(cfg)


@pytest.fixture
def vols(rbd_cfg: dict[str, Any]) -> Volumes:
    return Volumes(lambda: {"crlstceph": rbd_cfg}, node="n1")


def test_mon_hosts_parsing() -> None:
    assert rbd_mod.mon_hosts("[v2:127.0.0.1:3300,v1:127.0.0.1:6789]") == [
        {"host": "127.0.0.1", "port": "6789"}
    ]
    assert rbd_mod.mon_hosts("10.0.0.1 10.0.0.2:6790;10.0.0.3") == [
        {"host": "10.0.0.1", "port": "6789"},
        {"host": "10.0.0.2", "port": "6790"},
        {"host": "10.0.0.3", "port": "6789"},
    ]


def test_config_refuses_krbd_and_needs_monitors() -> None:
    with pytest.raises(ParamError) as err:
        RbdPlugin.check_config({"type": "rbd", "monhost": "127.0.0.1", "krbd": 1})
    assert "krbd" in err.value.errors
    with pytest.raises(ParamError) as err:
        RbdPlugin.check_config({"type": "rbd", "pool": "rbd"})
    assert "monhost" in err.value.errors
    assert RbdPlugin().is_shared({}) is True


def test_qemu_disk_names_everything_qemu_needs(vols: Volumes, rbd_cfg: dict[str, Any]) -> None:
    volid = vols.alloc("crlstceph", 360, size=MiB)
    try:
        disk = vols.qemu_disk(volid)
        assert disk == {
            "kind": "rbd",
            "pool": rbd_cfg["pool"],
            "image": "vm-360-disk-0",
            "conf": rbd_cfg["conf"],
            "user": "admin",
            "hosts": rbd_mod.mon_hosts(rbd_cfg["monhost"]),
            "keyring": rbd_cfg["keyring"],
            "format": "raw",
        }
        blockio.write(vols, volid, 0x42)  # QEMU (qemu-io) opens it from exactly that
        assert blockio.holds(vols, volid, 0x42)
    finally:
        vols.free(volid)


def test_container_roots_need_the_kernel_client(vols: Volumes) -> None:
    volid = vols.alloc("crlstceph", 361, size=MiB, content="rootdir")
    try:
        with pytest.raises(NotSupported, match="kernel rbd module"):
            vols.mount_rootdir(volid)
    finally:
        vols.free(volid)


def test_connection_is_shared_and_dropped(rbd_cfg: dict[str, Any]) -> None:
    first = rbd_mod.CONNECTIONS.get(rbd_cfg)
    assert rbd_mod.CONNECTIONS.get(dict(rbd_cfg)) is first
    RbdPlugin().deactivate(rbd_cfg)
    again = rbd_mod.CONNECTIONS.get(rbd_cfg)
    assert again is not first and again.state == "connected"


def test_unreachable_cluster_fails_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from corral.cluster.errors import Unavailable
    from tests.util import free_ports

    monkeypatch.setattr(rbd_mod, "CONNECT_TIMEOUT", 2)  # the bound under test, made short
    port = free_ports(1)  # nothing listens there
    cfg = {"type": "rbd", "monhost": f"127.0.0.1:{port}", "username": "admin", "pool": "x"}
    t0 = time.monotonic()
    with pytest.raises(Unavailable):
        RbdPlugin().activate(cfg)
    assert time.monotonic() - t0 < 2 + 5


def test_base_and_linked_clones(vols: Volumes) -> None:
    volid = vols.alloc("crlstceph", 362, size=2 * MiB)
    blockio.write(vols, volid, 0x61)
    base = vols.create_base(volid)
    assert base == "crlstceph:base-362-disk-0"
    assert vols.snapshots(base) == []  # __base__ is the template's, not the user's
    clone = vols.clone(base, 363)
    assert clone == "crlstceph:base-362-disk-0/vm-363-disk-0"
    try:
        assert blockio.holds(vols, clone, 0x61)
        assert [e["volid"] for e in vols.list_volumes("crlstceph", vmid=363)] == [clone]
        with pytest.raises(Conflict):
            vols.free(base)  # its clone still reads from it
    finally:
        vols.free(clone)
    vols.free(base)
    assert vols.list_volumes("crlstceph", vmid=362) == []


def test_namespace_keeps_volumes_apart(ceph: Any, rbd_cfg: dict[str, Any]) -> None:
    import rados  # type: ignore[import-not-found]
    import rbd  # type: ignore[import-not-found]

    ns = f"{RUN}ns"
    with (
        rados.Rados(conffile=ceph.conf_path) as cluster,
        cluster.open_ioctx(rbd_cfg["pool"]) as ioctx,
    ):
        if not rbd.RBD().namespace_exists(ioctx, ns):
            rbd.RBD().namespace_create(ioctx, ns)
    cfgs = {"crlstceph": rbd_cfg, "crlstns": {**rbd_cfg, "namespace": ns}}
    vols = Volumes(lambda: cfgs, node="n1")
    volid = vols.alloc("crlstns", 364, size=MiB)
    try:
        assert vols.qemu_disk(volid)["namespace"] == ns
        blockio.write(vols, volid, 0x64)
        assert blockio.holds(vols, volid, 0x64)
        assert vols.list_volumes("crlstceph", vmid=364) == []
        assert [e["volid"] for e in vols.list_volumes("crlstns", vmid=364)] == [volid]
    finally:
        vols.free(volid)
        RbdPlugin().deactivate(cfgs["crlstns"])
