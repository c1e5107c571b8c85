"""Parallel automation against a real corrald: what Ansible and most scripts do.

Each client asks `GET /cluster/nextid` and then creates a container with the
ID it got, through proxmoxer, all clients at once. Before GET held its answer
for the caller, 20-23 of 30 such creates failed with 409 "CT 101 already
exists"; now every one must succeed, with distinct IDs, and the creates of
many guests on one storage queue instead of failing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI
from proxmoxer.tools import Tasks

from corral.cluster import keys
from tests.nodes import ct_node, node_store
from tests.util import Corrald

pytestmark = pytest.mark.timeout(600)
NODE = "node1"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corrald]:
    with ct_node(tmp_path_factory.mktemp("par") / "node", node=NODE) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def template(node: Corrald) -> str:
    return node.build_template(timeout=120)


def _prox(node: Corrald) -> ProxmoxAPI:
    return ProxmoxAPI(
        "127.0.0.1", user="admin@pve", password=node.password, verify_ssl=False,
        port=node.port, timeout=120,
    )  # fmt: skip


def run_clients(node: Corrald, template: str, clients: int, creates: int) -> dict[str, Any]:
    """`clients` threads, each doing `creates` times: GET nextid, create, wait for the task."""
    errors: list[str] = []
    vmids: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client() -> None:
        prox = _prox(node)
        barrier.wait()
        for _ in range(creates):
            try:
                vmid = int(prox.cluster.nextid.get())
                upid = prox.nodes(NODE).lxc.post(
                    vmid=vmid, ostemplate=template, rootfs="local:1", memory=64
                )
                st = Tasks.blocking_status(prox, upid, timeout=300, polling_interval=0.1)
                with lock:
                    vmids.append(vmid)
                    if st is None or st["exitstatus"] != "OK":
                        errors.append(f"{vmid}: {st}")
            except Exception as err:  # noqa: BLE001 - counted, reported by the test
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return {"errors": errors, "vmids": vmids}


def destroy_all(node: Corrald, vmids: list[int]) -> None:
    prox = _prox(node)
    for vmid in vmids:
        try:
            upid = prox.nodes(NODE).lxc(vmid).delete()
            Tasks.blocking_status(prox, upid, timeout=120, polling_interval=0.1)
        except Exception:  # noqa: BLE001 - it may not have been created
            pass


@pytest.mark.parametrize(("clients", "creates"), [(10, 3), (50, 1)])
def test_parallel_nextid_then_create_has_no_errors(
    node: Corrald, template: str, clients: int, creates: int
) -> None:
    result = run_clients(node, template, clients, creates)
    try:
        assert result["errors"] == []
        assert len(result["vmids"]) == clients * creates
        assert len(set(result["vmids"])) == clients * creates  # every client its own IDs
        with node_store(node) as store:
            for vmid in result["vmids"]:
                assert store.get_value(keys.guest(vmid))["lock"] is None
                assert store.get(keys.vmid_reservation(vmid)) is None  # the create used it
    finally:
        destroy_all(node, result["vmids"])
    assert not any(Path(node.data_dir / "local" / "private").glob("subvol-*"))


def test_a_held_id_is_the_callers_only(node: Corrald, template: str) -> None:
    """Another user cannot take an ID GET /cluster/nextid just handed out."""
    prox = _prox(node)
    held = int(prox.cluster.nextid.get())
    assert int(prox.cluster.nextid.get()) != held  # the next caller gets another one
    assert int(prox.cluster.nextid.get(vmid=held)) == held  # still free for its holder
    admin = node.session()
    admin.data("POST", "/access/users", data={"userid": "other@pve", "password": "other-pass1"})
    admin.data(
        "PUT", "/access/acl", data={"path": "/", "users": "other@pve", "roles": "PVEVMAdmin"}
    )
    other = node.session("other@pve", "other-pass1")
    r = other.request("GET", "/cluster/nextid", params={"vmid": held})
    assert r.status_code == 400 and "vmid" in r.json()["errors"]
    r = other.request(
        "POST",
        f"/nodes/{NODE}/lxc",
        data={"vmid": held, "ostemplate": template, "rootfs": "local:1"},
    )
    assert r.status_code == 409 and "reserved by admin@pve" in r.text
