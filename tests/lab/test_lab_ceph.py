"""`corral lab up --ceph`: a real Ceph on the lab bridge that every node uses as one
shared `rbd` storage, and a lab that leaves nothing behind."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import lab as labmod
from corral.cluster.client import Client
from tests.util import wait_for

PREFIX = "crlq"
SUBNET = "10.249.82.0/24"


def _ceph_pids(lab_dir: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"{lab_dir}/ceph/ceph.conf"], capture_output=True,
                         text=True, timeout=10).stdout  # fmt: skip
    return out.split()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labmod.Lab]:
    lab_dir = str(tmp_path_factory.mktemp("cephlab") / "lab")
    lab = labmod.up(lab_dir, 2, SUBNET, PREFIX, ceph=True)
    yield lab
    labmod.down(lab_dir, quiet=True)
    assert _ceph_pids(lab_dir) == []
    assert not Path(lab_dir).exists()


def _node(lab: labmod.Lab, name: str) -> Client:
    return Client(socket_path=str(Path(lab.node(name).data_dir, "corrald.sock")), timeout=30)


def _ceph_row(lab: labmod.Lab, n: str) -> dict:
    rows = _node(lab, n).call("GET", f"/nodes/{n}/storage")
    return {r["storage"]: r for r in rows}[labmod.CEPH_STORAGE]


def test_every_node_sees_one_shared_rbd_storage(lab: labmod.Lab) -> None:
    # A freshly started Ceph can fail a node's first `ceph df` (the mgr has not yet
    # reported pool stats, or a monitor session is still being set up): the row is
    # then inactive with the reason in "error", and active at the next status call.
    rows = {
        n: wait_for(
            lambda n=n: (r := _ceph_row(lab, n))["active"] == 1 and r,
            60,
            what=f"{labmod.CEPH_STORAGE} active on {n}",
        )
        for n in ("node1", "node2")
    }
    for n in ("node1", "node2"):
        ceph = rows[n]
        assert ceph["type"] == "rbd" and ceph["active"] == 1 and ceph["shared"] == 1
        assert ceph["total"] > 1 << 30
    volid = _node(lab, "node2").call(
        "POST",
        f"/nodes/node2/storage/{labmod.CEPH_STORAGE}/content",
        {"vmid": 120, "filename": "vm-120-disk-0", "size": "32M"},
    )
    assert volid == f"{labmod.CEPH_STORAGE}:vm-120-disk-0"
    # Made through node2, seen by node1: the same pool.
    listed = _node(lab, "node1").call(
        "GET", f"/nodes/node1/storage/{labmod.CEPH_STORAGE}/content", {"vmid": 120}
    )
    assert [(v["volid"], v["size"]) for v in listed] == [(volid, 32 << 20)]
    upid = _node(lab, "node1").call(
        "DELETE", f"/nodes/node1/storage/{labmod.CEPH_STORAGE}/content/{volid}", {"delay": 30}
    )
    assert upid is None
