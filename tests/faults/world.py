"""Helpers of the fault suite: a corrald whose tasks can be frozen at a logged
step (CORRAL_TEST_PAUSE_AT, see cluster/tasks.py), kill -9, and the invariants
checked through the API and against the world (lxc, the storage dir, etcd)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from corral.cluster import keys
from corral.cluster.store import Store
from tests.util import ApiSession, Corrald, wait_for

NODE = "node1"


def start(node: Corrald, pause_at: str = "", pause_seconds: float = 120) -> Corrald:
    """(Re)start `node`; with `pause_at`, its tasks freeze at a log line containing it."""
    saved = {k: os.environ.get(k) for k in ("CORRAL_TEST_PAUSE_AT", "CORRAL_TEST_PAUSE_SECONDS")}
    os.environ["CORRAL_TEST_PAUSE_AT"] = pause_at
    os.environ["CORRAL_TEST_PAUSE_SECONDS"] = str(pause_seconds)
    try:
        return node.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kill9(node: Corrald) -> None:
    """kill -9 corrald itself (not its process group), as a crash would."""
    assert node.proc is not None
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    node.proc = None
    # Its private etcd follows it (it is supervised with a parent-death signal).
    wait_for(lambda: node.etcd_pid() is None, 15, 0.1, what="etcd gone after corrald died")


def log_text(s: ApiSession, upid: str) -> str:
    lines = s.data("GET", f"/nodes/{NODE}/tasks/{upid}/log", params={"limit": 0})
    return "\n".join(line["t"] for line in lines)


def wait_log(s: ApiSession, upid: str, text: str, timeout: float = 60) -> None:
    wait_for(lambda: text in log_text(s, upid), timeout, 0.05, what=f"'{text}' in {upid}'s log")


def store(node: Corrald) -> Store:
    return Store([f"http://127.0.0.1:{node.etcd_port}"])


def lxc_names(node: Corrald, *, active: bool = False) -> set[str]:
    argv = ["lxc-ls", "-P", str(node.data_dir / "lxc"), "-1"]
    if active:
        argv.append("--active")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return set(out.stdout.split())


def volumes_of(storage_dir: Path, vmid: int) -> list[str]:
    return sorted(p.name for p in (storage_dir / "images" / str(vmid)).glob("*"))


def fresh_resources(s: ApiSession, timeout: float = 10) -> list[dict[str, Any]]:
    """/cluster/resources once it is not marked stale (X-Corral-Stale: 1 right after
    an etcd restart, while the node's view catches up: flagged, not wrong)."""

    def fresh() -> Any:
        r = s.get("/cluster/resources")
        if r.status_code == 503 or r.headers.get("X-Corral-Stale"):
            return None
        assert r.status_code == 200, r.text
        return [r.json()["data"]]  # truthy even when empty

    return wait_for(fresh, timeout, 0.1, what="a fresh /cluster/resources")[0]


def assert_clean(node: Corrald, s: ApiSession) -> None:
    """No lock, no unfinished task, no task marked running: through the API and in etcd."""
    for g in fresh_resources(s):
        assert not g.get("lock"), g
    tasks = s.data("GET", f"/nodes/{NODE}/tasks", params={"source": "all", "limit": 1000})
    assert [t for t in tasks if t.get("status") in ("running", "queued")] == []
    st = store(node)
    try:
        for kv in st.range("guests/"):
            assert kv.value.get("lock") is None, kv.value
        for kv in st.range(f"tasks/{NODE}/"):
            assert kv.value["status"] == "stopped", kv.value
        assert st.range("locks/") == []
    finally:
        st.close()


def guest_gone(node: Corrald, s: ApiSession, vmid: int, storage_dir: Path) -> None:
    """`vmid` exists nowhere: not in the API, not in lxc, not on the storage, not in etcd."""
    assert vmid not in [g.get("vmid") for g in fresh_resources(s)]
    assert str(vmid) not in lxc_names(node)
    assert not (node.data_dir / "lxc" / str(vmid)).exists()
    assert volumes_of(storage_dir, vmid) == []
    st = store(node)
    try:
        assert st.get(keys.guest(vmid)) is None
    finally:
        st.close()


def task_status(s: ApiSession, upid: str) -> dict[str, Any]:
    return s.data("GET", f"/nodes/{NODE}/tasks/{upid}/status")


def wait_task_through_outage(s: ApiSession, upid: str, timeout: float = 120) -> dict[str, Any]:
    """A task's end, asking again while the API answers 503 (its etcd restarting)."""

    def done() -> Any:
        r = s.get(f"/nodes/{NODE}/tasks/{upid}/status")
        if r.status_code == 503:
            return None
        assert r.status_code == 200, r.text
        st = r.json()["data"]
        return st if st["status"] == "stopped" else None

    return wait_for(done, timeout, 0.2, what=f"task {upid} through an etcd outage")


def kill9_etcd(node: Corrald) -> int:
    pid = node.etcd_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid
