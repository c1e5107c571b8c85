"""A real 3-node cluster on this machine: join, node loss, partitions, quorum, cleanup.

Each node is a network namespace on a lab bridge with its own corrald and
etcd member, formed with the real `corral cluster create/join`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from corral.cluster import lab as labmod
from corral.lxc import templates
from tests.util import wait_for

PREFIX = "crlt"
SUBNET = "10.249.78.0/24"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labmod.Lab]:
    lab_dir = str(tmp_path_factory.mktemp("lab") / "lab")
    labmod.down(lab_dir, quiet=True)
    lab = labmod.up(lab_dir, 3, SUBNET, PREFIX)
    yield lab
    labmod.down(lab_dir, quiet=True)
    assert (
        PREFIX
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=10
        ).stdout
    )
    assert not Path(lab_dir).exists()


def _api(lab: labmod.Lab, name: str) -> requests.Session:
    """A logged-in session to one node over the lab network (verified with the CA)."""
    node = lab.node(name)
    first = lab.nodes[0]
    s = requests.Session()
    s.verify = False  # replaced per request below: REQUESTS_CA_BUNDLE overrides it
    password = Path(first.data_dir, "initial-admin-password").read_text().strip()
    r = s.post(
        f"{node.url}api2/json/access/ticket",
        timeout=15,
        data={"username": "admin@pve", "password": password},
        verify=str(Path(first.data_dir, "ssl", "ca.pem")),
    )
    r.raise_for_status()
    data = r.json()["data"]
    s.cookies.set("PVEAuthCookie", data["ticket"])
    s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]
    s.headers["X-Lab-CA"] = str(Path(first.data_dir, "ssl", "ca.pem"))
    return s


def _get(s: requests.Session, lab: labmod.Lab, name: str, path: str) -> requests.Response:
    return s.get(f"{lab.node(name).url}api2/json{path}", timeout=15, verify=s.headers["X-Lab-CA"])


def _online(lab: labmod.Lab, viewer: str) -> dict[str, str]:
    s = _api(lab, viewer)
    return {n["node"]: n["status"] for n in _get(s, lab, viewer, "/nodes").json()["data"]}


def test_every_node_sees_all_three_online(lab: labmod.Lab) -> None:
    for viewer in ("node1", "node2", "node3"):
        assert _online(lab, viewer) == {"node1": "online", "node2": "online", "node3": "online"}
    s = _api(lab, "node2")
    members = _get(s, lab, "node2", "/cluster/config/nodes").json()["data"]
    assert sorted(m["node"] for m in members) == ["node1", "node2", "node3"]
    assert all(m["quorum_votes"] == 1 for m in members)
    status = _get(s, lab, "node3", "/cluster/status").json()["data"]
    assert status[0]["quorate"] == 1 and status[0]["nodes"] == 3


def test_a_ticket_from_one_node_works_on_every_node(lab: labmod.Lab) -> None:
    s = _api(lab, "node1")
    assert _get(s, lab, "node3", "/version").status_code == 200


def test_node_local_calls_are_forwarded_to_their_node(lab: labmod.Lab) -> None:
    s = _api(lab, "node1")
    r = _get(s, lab, "node1", "/nodes/node3/status")
    assert r.status_code == 200, r.text
    assert r.headers["X-Corral-Node"] == "node3"  # answered by node3 itself
    assert r.json()["data"]["uptime"] > 0
    assert _get(s, lab, "node1", "/nodes/node1/status").headers["X-Corral-Node"] == "node1"
    # The root-only socket forwards too (with a short-lived root ticket).
    local = labmod._local(lab.node("node2"))
    assert local.call("GET", "/nodes/node3/status")["uptime"] > 0
    # An upload to node3's own disk through node1, streamed through with its checksum.
    body = os.urandom(2 << 20)
    r = s.post(
        f"{lab.node('node1').url}api2/json/nodes/node3/storage/local/upload",
        data={"content": "iso", "checksum": hashlib.sha256(body).hexdigest(),
              "checksum-algorithm": "sha256"},
        files={"filename": ("fwd.iso", body)},
        timeout=60, verify=s.headers["X-Lab-CA"],
    )  # fmt: skip
    assert r.status_code == 200, r.text
    _wait_task(s, lab, "node1", r.json()["data"])
    assert (
        Path(lab.node("node3").data_dir, "local", "template", "iso", "fwd.iso").read_bytes() == body
    )
    assert not Path(lab.node("node1").data_dir, "local", "template", "iso", "fwd.iso").exists()


def _post(s: requests.Session, lab: labmod.Lab, name: str, path: str, **data: Any) -> Any:
    r = s.post(f"{lab.node(name).url}api2/json{path}", data=data, timeout=30,
               verify=s.headers["X-Lab-CA"])  # fmt: skip
    assert r.status_code == 200, f"POST {path}: {r.status_code} {r.text}"
    return r.json()["data"]


def _wait_task(s: requests.Session, lab: labmod.Lab, via: str, upid: str) -> dict[str, Any]:
    node = upid.split(":")[1]

    def done() -> Any:
        st = _get(s, lab, via, f"/nodes/{node}/tasks/{upid}/status").json()["data"]
        return st if st["status"] == "stopped" else None

    status: dict[str, Any] = wait_for(done, 120, 0.1, f"task {upid}")
    if status.get("exitstatus") != "OK":
        log = _get(s, lab, via, f"/nodes/{node}/tasks/{upid}/log?limit=0").json()["data"]
        raise AssertionError(f"{upid}: {status}\n" + "\n".join(x["t"] for x in log))
    return status


def _current(s: requests.Session, lab: labmod.Lab, via: str, node: str, vmid: int) -> Any:
    r = _get(s, lab, via, f"/nodes/{node}/lxc/{vmid}/status/current")
    return r.json()["data"] if r.status_code == 200 else None


@pytest.fixture(scope="module")
def template(lab: labmod.Lab) -> str:
    """A busybox container template on the lab's shared storage."""
    cache = Path(lab.dir, "shared", "template", "cache")
    archive = templates.build_busybox(str(cache), log=lambda _m: None)
    return f"{labmod.SHARED_STORAGE}:vztmpl/{os.path.basename(archive)}"


def _running_here(lab: labmod.Lab, node: str) -> list[str]:
    """Containers liblxc itself says run on `node` (not what corral believes)."""
    lxcpath = str(Path(lab.node(node).data_dir, "lxc"))
    proc = subprocess.run(
        labmod.in_node(lab.node(node), ["lxc-ls", "-P", lxcpath, "--running", "-1"]),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    return proc.stdout.split()


def _remove(lab: labmod.Lab, vmid: int) -> None:
    s = _api(lab, "node1")
    for node in ("node1", "node2", "node3"):
        base = f"{lab.node('node1').url}api2/json/nodes/{node}/lxc/{vmid}"
        r = s.post(f"{base}/status/stop", timeout=30, verify=s.headers["X-Lab-CA"])
        if r.status_code == 200:
            _wait_task(s, lab, "node1", r.json()["data"])
            r = s.delete(base, timeout=30, verify=s.headers["X-Lab-CA"])
            if r.status_code == 200:
                _wait_task(s, lab, "node1", r.json()["data"])


def test_container_made_through_node3_runs_on_node1_and_moves_to_node2(
    lab: labmod.Lab, template: str
) -> None:
    """The issue's scenario, with a real container on the lab's shared storage."""
    vmid = 90100
    s3 = _api(lab, "node3")
    upid = _post(
        s3, lab, "node3", "/nodes/node1/lxc", vmid=vmid, hostname="mover", memory=64,
        ostemplate=template, rootfs=f"{labmod.SHARED_STORAGE}:1", start=1,
        net0="name=eth0,bridge=vmbr0,ip=192.168.201.2/24",
    )  # fmt: skip
    try:
        _wait_task(s3, lab, "node3", upid)
        cur = _current(s3, lab, "node3", "node1", vmid)
        assert cur["status"] == "running" and cur["pid"] > 0

        def listed_on(node: str) -> Any:
            rows = _get(s3, lab, "node2", "/cluster/resources?type=vm").json()["data"]
            row = next((r for r in rows if r["vmid"] == vmid), None)
            return row if row and row["node"] == node and row["status"] == "running" else None

        wait_for(lambda: listed_on("node1"), 10, 0.1, "CT listed on node1")
        s2 = _api(lab, "node2")
        pre = _get(s2, lab, "node2", f"/nodes/node1/lxc/{vmid}/migrate").json()["data"]
        assert pre["running"] == 1 and sorted(pre["allowed_nodes"]) == ["node2", "node3"]
        started = time.monotonic()
        upid = _post(s2, lab, "node2", f"/nodes/node1/lxc/{vmid}/migrate", target="node2",
                     restart=1)  # fmt: skip
        _wait_task(s2, lab, "node2", upid)
        wait_for(
            lambda: (_current(s2, lab, "node2", "node2", vmid) or {}).get("status") == "running",
            30, 0.05, "CT running on node2",
        )  # fmt: skip
        downtime = time.monotonic() - started
        print(f"restart migration: running again on node2 {downtime:.2f} s after the request")
        assert _get(s2, lab, "node2", f"/nodes/node1/lxc/{vmid}/status/current").status_code == 404
        wait_for(lambda: listed_on("node2"), 10, 0.1, "CT listed on node2")
        # Nothing of it is left running on node1.
        assert str(vmid) not in _running_here(lab, "node1")
        assert str(vmid) in _running_here(lab, "node2")
    finally:
        _remove(lab, vmid)


def test_container_on_local_storage_is_copied_to_the_target(lab: labmod.Lab, template: str) -> None:
    """`local` is a different disk on every node: a restart migration streams the
    root filesystem over, and the data inside comes along."""
    vmid = 90102
    s = _api(lab, "node1")
    upid = _post(s, lab, "node1", "/nodes/node1/lxc", vmid=vmid, memory=64, ostemplate=template,
                 rootfs="local:1", start=1)  # fmt: skip
    try:
        _wait_task(s, lab, "node1", upid)
        rel = Path("images", str(vmid), f"subvol-{vmid}-disk-0.subvol")
        src = Path(lab.node("node1").data_dir, "local", rel)
        (src / "root" / "marker").write_text("made on node1\n")
        pre = _get(s, lab, "node1", f"/nodes/node1/lxc/{vmid}/migrate").json()["data"]
        assert [d["volid"] for d in pre["local_disks"]] == [f"local:{vmid}/{rel.parts[-1]}"]
        upid = _post(s, lab, "node1", f"/nodes/node1/lxc/{vmid}/migrate", target="node2",
                     restart=1)  # fmt: skip
        _wait_task(s, lab, "node1", upid)
        assert (_current(s, lab, "node1", "node2", vmid) or {}).get("status") == "running"
        dst = Path(lab.node("node2").data_dir, "local", rel)
        assert (dst / "root" / "marker").read_text() == "made on node1\n"
        assert not src.exists()  # the source copy is gone once the CT runs from the new one
        assert _running_here(lab, "node2") == [str(vmid)]
    finally:
        _remove(lab, vmid)


def test_killed_node_goes_offline_and_comes_back(lab: labmod.Lab) -> None:
    labmod.kill(lab, "node3")
    start = time.monotonic()
    wait_for(
        lambda: _online(lab, "node1")["node3"] == "offline", 20, 0.2, what="node3 offline on node1"
    )
    took = time.monotonic() - start
    assert took < 15, took  # lease TTL 6 s
    labmod.start_node(lab, lab.node("node3"))
    wait_for(lambda: _online(lab, "node1")["node3"] == "online", 30, 0.2, what="node3 back")


def test_partitioned_node_goes_offline_and_heals(lab: labmod.Lab, template: str) -> None:
    """A running guest on the cut-off node keeps running, and after healing it is
    there exactly once (nothing lost, nothing duplicated)."""
    vmid = 90101
    s = _api(lab, "node1")
    upid = _post(s, lab, "node1", "/nodes/node2/lxc", vmid=vmid, memory=64, ostemplate=template,
                 rootfs=f"{labmod.SHARED_STORAGE}:1", start=1)  # fmt: skip
    _wait_task(s, lab, "node1", upid)
    labmod.partition(lab, "node2", cut=True)
    try:
        wait_for(lambda: _online(lab, "node1")["node2"] == "offline", 20, 0.2, what="node2 offline")
        # The majority side keeps working.
        s = _api(lab, "node1")
        r = s.post(
            f"{lab.node('node1').url}api2/json/cluster/nextid",
            timeout=15,
            verify=s.headers["X-Lab-CA"],
        )
        assert r.status_code == 200
        assert _running_here(lab, "node2") == [str(vmid)]  # cut off, still running
    finally:
        labmod.partition(lab, "node2", cut=False)
    wait_for(lambda: _online(lab, "node1")["node2"] == "online", 30, 0.2, what="node2 healed")
    try:

        def listed() -> Any:
            rows = _get(s, lab, "node3", "/cluster/resources?type=vm").json()["data"]
            mine = [r for r in rows if r["vmid"] == vmid]
            return mine if mine and mine[0]["status"] == "running" else None

        rows = wait_for(listed, 15, 0.2, "guest listed after healing")
        assert [(r["node"], r["status"]) for r in rows] == [("node2", "running")]
        assert _running_here(lab, "node2") == [str(vmid)]
        assert str(vmid) not in _running_here(lab, "node1") + _running_here(lab, "node3")
    finally:
        _remove(lab, vmid)


def test_without_quorum_writes_fail_fast_and_reads_answer_stale(lab: labmod.Lab) -> None:
    s = _api(lab, "node1")
    labmod.kill(lab, "node2")
    labmod.kill(lab, "node3")
    try:

        def refused() -> bool:
            r = s.post(
                f"{lab.node('node1').url}api2/json/cluster/nextid",
                timeout=15,
                verify=s.headers["X-Lab-CA"],
            )
            return r.status_code == 503 and "not quorate" in r.json()["message"]

        wait_for(refused, 15, 0.2, what="writes refused")
        start = time.monotonic()
        assert refused()
        assert time.monotonic() - start < 3  # fast, not a 5 s timeout
        r = _get(s, lab, "node1", "/cluster/status")
        assert r.status_code == 200 and r.headers.get("X-Corral-Stale") == "1"
        assert r.json()["data"][0]["quorate"] == 0
    finally:
        labmod.start_node(lab, lab.node("node2"))
        labmod.start_node(lab, lab.node("node3"))
    wait_for(
        lambda: (
            s.post(
                f"{lab.node('node1').url}api2/json/cluster/nextid",
                timeout=15,
                verify=s.headers["X-Lab-CA"],
            ).status_code
            == 200
        ),
        30,
        0.3,
        what="writes back with quorum",
    )
    wait_for(lambda: set(_online(lab, "node1").values()) == {"online"}, 30, 0.3, what="all online")


def test_a_node_restarting_without_quorum_comes_up_and_recovers(lab: labmod.Lab) -> None:
    labmod.kill(lab, "node2")
    labmod.kill(lab, "node3")
    labmod.kill(lab, "node1")
    try:
        # node1 alone has no quorum (and a restarted etcd member serves nothing
        # then), yet corrald must start and answer at once with the reason.
        labmod.start_node(lab, lab.node("node1"))
        local = labmod._local(lab.node("node1"))
        assert local.call("GET", "/version")["product"] == "corral"
        start = time.monotonic()
        with pytest.raises(Exception, match="unavailable|not quorate"):
            local.call("GET", "/cluster/status")
        assert time.monotonic() - start < 5
    finally:
        labmod.start_node(lab, lab.node("node2"))
        labmod.start_node(lab, lab.node("node3"))
    wait_for(
        lambda: set(_online(lab, "node2").values()) == {"online"},
        60,
        0.3,
        what="all online after a cold start",
    )


def test_delnode_removes_a_dead_node(lab: labmod.Lab) -> None:
    """Last in this module: it shrinks the lab to two nodes."""
    s = _api(lab, "node1")
    url = f"{lab.node('node1').url}api2/json/cluster/config/nodes/node3"
    refused = s.delete(url, timeout=15, verify=s.headers["X-Lab-CA"])
    assert refused.status_code == 409 and "online" in refused.json()["message"]
    labmod.kill(lab, "node3")
    wait_for(lambda: _online(lab, "node1")["node3"] == "offline", 20, 0.2, what="node3 down")
    r = s.delete(url, timeout=30, verify=s.headers["X-Lab-CA"])
    assert r.status_code == 200, r.text
    members = _get(s, lab, "node1", "/cluster/config/nodes").json()["data"]
    assert sorted(m["node"] for m in members) == ["node1", "node2"]
    assert set(_online(lab, "node2")) == {"node1", "node2"}
    r = s.post(
        f"{lab.node('node1').url}api2/json/cluster/nextid", timeout=15, verify=s.headers["X-Lab-CA"]
    )
    assert r.status_code == 200  # two of two members: still quorate
