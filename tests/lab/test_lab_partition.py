"""A network partition of a lab node, with guests operated on from both sides.

node2 is cut off (its veth down) while it runs a container. During the cut:
the minority side (node2, reached through its root-only unix socket, the only
way in) refuses every write with a clear "not quorate" error and keeps its
guest running; the majority side keeps working for its own guests and refuses,
with a clear error, to act on the cut-off node's guest (no task is left queued
there to fire when the link comes back). After healing everything converges:
each guest runs exactly once where its record says, no lock, no task left
queued or running on any node.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.cluster import lab as labmod
from corral.cluster.client import ApiError, Client
from corral.lxc import templates
from tests.lab.test_lab import _api, _get, _online, _post, _remove, _running_here, _wait_task
from tests.util import wait_for

PREFIX = "crlx"
SUBNET = "10.249.92.0/24"
NODES = ("node1", "node2", "node3")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labmod.Lab]:
    lab_dir = str(tmp_path_factory.mktemp("lab") / "lab")
    labmod.down(lab_dir, quiet=True)
    lab = labmod.up(lab_dir, 3, SUBNET, PREFIX)
    try:
        yield lab
    finally:
        labmod.down(lab_dir, quiet=True)
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert PREFIX not in out.stdout


@pytest.fixture(scope="module")
def template(lab: labmod.Lab) -> str:
    cache = Path(lab.dir, "shared", "template", "cache")
    archive = templates.build_busybox(str(cache), log=lambda _m: None)
    return f"{labmod.SHARED_STORAGE}:vztmpl/{os.path.basename(archive)}"


def _socket(lab: labmod.Lab, name: str) -> Client:
    """The node's root-only unix socket: reachable while its network is cut."""
    return Client(socket_path=str(Path(lab.node(name).data_dir, "corrald.sock")), timeout=30)


def _refused(call: Any) -> ApiError:
    started = time.monotonic()
    with pytest.raises(ApiError) as err:
        call()
    assert time.monotonic() - started < 10  # refused, not hung
    return err.value


def _tasks(lab: labmod.Lab, node: str) -> list[dict[str, Any]]:
    return list(
        _socket(lab, "node1").call("GET", f"/nodes/{node}/tasks", {"source": "all", "limit": 500})
    )


def test_partition_both_sides_then_heal(lab: labmod.Lab, template: str) -> None:
    a, b = 90201, 90202  # a: on node2 (cut off), running; b: on node1 (majority)
    s = _api(lab, "node1")
    shared = f"{labmod.SHARED_STORAGE}:1"
    upid = _post(s, lab, "node1", "/nodes/node2/lxc", vmid=a, memory=64, ostemplate=template,
                 rootfs=shared, start=1)  # fmt: skip
    _wait_task(s, lab, "node1", upid)
    upid = _post(s, lab, "node1", "/nodes/node1/lxc", vmid=b, memory=64, ostemplate=template,
                 rootfs=shared)  # fmt: skip
    _wait_task(s, lab, "node1", upid)
    minority = _socket(lab, "node2")
    labmod.partition(lab, "node2", cut=True)
    try:
        wait_for(lambda: _online(lab, "node1")["node2"] == "offline", 30, 0.2, what="node2 offline")

        # Minority side: every write refused, saying why; the guest keeps running.
        def not_quorate() -> bool:
            try:
                minority.call("POST", "/cluster/nextid")  # a write that changes nothing
            except ApiError as err:
                return "quorate" in str(err)
            return False

        wait_for(not_quorate, 30, 0.2, what="node2 refusing writes")
        for method, path, params in (
            ("POST", f"/nodes/node2/lxc/{a}/status/stop", None),
            ("PUT", f"/nodes/node2/lxc/{a}/config", {"memory": 96}),
            ("POST", "/nodes/node2/lxc", {"vmid": 90203, "ostemplate": template,
                                          "rootfs": shared}),
            ("POST", f"/nodes/node2/lxc/{a}/migrate", {"target": "node1", "restart": 1}),
        ):  # fmt: skip
            err = _refused(lambda m=method, p=path, q=params: minority.call(m, p, q))
            print(f"minority {method} {path}: {err.status} {err} {err.errors}")
            assert "quorate" in str(err), (path, err)
        assert _running_here(lab, "node2") == [str(a)]

        # Majority side: its own guests work; the cut-off node's guest is refused
        # (nothing queued there to fire when it comes back), saying why.
        upid = _post(s, lab, "node1", f"/nodes/node1/lxc/{b}/status/start")
        _wait_task(s, lab, "node1", upid)
        majority = _socket(lab, "node1")
        for method, path, params in (
            ("POST", f"/nodes/node2/lxc/{a}/status/stop", None),
            ("PUT", f"/nodes/node2/lxc/{a}/config", {"memory": 96}),
            ("POST", "/nodes/node2/lxc", {"vmid": 90203, "ostemplate": template,
                                          "rootfs": shared}),
            ("POST", f"/nodes/node2/lxc/{a}/migrate", {"target": "node1", "restart": 1}),
            ("DELETE", f"/nodes/node2/lxc/{a}", None),
        ):  # fmt: skip
            err = _refused(lambda m=method, p=path, q=params: majority.call(m, p, q))
            print(f"majority {method} {path}: {err.status} {err}")
            assert err.status == 503 and "node 'node2' is offline" in str(err), (path, err)
        assert _running_here(lab, "node2") == [str(a)]
        assert _running_here(lab, "node1") == [str(b)]
    finally:
        labmod.partition(lab, "node2", cut=False)
    wait_for(lambda: set(_online(lab, "node1").values()) == {"online"}, 60, 0.3, what="healed")
    try:
        # Converged: each guest runs once, where its record says; nothing locked,
        # nothing queued or running on any node; the refused calls left no trace.
        def converged() -> Any:
            rows = _get(s, lab, "node3", "/cluster/resources?type=vm").json()["data"]
            mine = sorted((r["vmid"], r["node"], r["status"], r.get("lock") or "")
                          for r in rows if r["vmid"] in (a, b))  # fmt: skip
            return mine == [(a, "node2", "running", ""), (b, "node1", "running", "")]

        wait_for(converged, 30, 0.3, what="both guests running where their records say")
        assert _running_here(lab, "node1") == [str(b)]
        assert _running_here(lab, "node2") == [str(a)]
        assert _running_here(lab, "node3") == []
        config = _get(s, lab, "node1", f"/nodes/node2/lxc/{a}/config").json()["data"]
        assert config["memory"] == 64
        assert _get(s, lab, "node1", "/nodes/node2/lxc/90203/config").status_code != 200
        for n in NODES:
            active = [t for t in _tasks(lab, n) if t.get("status") in ("running", "queued")]
            assert active == [], (n, active)
            assert not [
                t
                for t in _tasks(lab, n)
                if t["id"] == str(a) and t["type"] not in ("vzcreate", "vzstart")
            ]
        # Both sides work on both guests again.
        upid = _post(s, lab, "node1", f"/nodes/node2/lxc/{a}/status/stop")
        _wait_task(s, lab, "node1", upid)
        assert _running_here(lab, "node2") == []
    finally:
        _remove(lab, a)
        _remove(lab, b)
