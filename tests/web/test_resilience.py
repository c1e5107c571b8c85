"""A node whose etcd dies answers 503 fast, gets it back, and survives its own restart."""

from __future__ import annotations

import os
import signal
import time

from tests.util import Corrald, wait_for


def test_etcd_killed_gives_503_fast_then_recovers(fresh_corrald: Corrald) -> None:
    node = fresh_corrald
    s = node.session()
    assert s.get("/cluster/status").status_code == 200
    pid = node.etcd_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # hung, not dead: the hardest case for a client
    try:
        # A whole-cluster read answers fast: from the node's view flagged stale, or
        # (once the node has seen quorum lost, and its request's identity cannot be
        # confirmed) a 503 that says why. Never a hang, never an unflagged answer.
        start = time.monotonic()
        r = s.get("/cluster/resources")
        elapsed = time.monotonic() - start
        if r.status_code == 200:
            assert r.headers.get("X-Corral-Stale") == "1", r.text
            rows = {row["id"] for row in r.json()["data"]}
            assert rows >= {"node/node1", "storage/node1/local"}
        else:
            assert r.status_code == 503, r.text
            assert "cluster state store unavailable" in r.json()["message"]
        assert elapsed < 5, elapsed
        # ...and what needs etcd (a VMID reservation is a write) fails fast and says why.
        start = time.monotonic()
        r = s.post("/cluster/nextid")
        elapsed = time.monotonic() - start
        assert r.status_code == 503, r.text
        assert "cluster state store unavailable" in r.json()["message"]
        assert elapsed < 5, elapsed
    finally:
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)
    # corrald's supervisor restarts its etcd; the API comes back by itself.
    wait_for(
        lambda: s.get("/cluster/status").status_code == 200,
        30,
        0.2,
        what="API back after etcd restart",
    )
    assert node.etcd_pid() not in (None, pid)
    upid_ok = s.post("/cluster/nextid").status_code
    assert upid_ok == 200


def test_restart_keeps_state_and_sigterm_is_clean(fresh_corrald: Corrald) -> None:
    node = fresh_corrald
    s = node.session()
    tok = s.data("POST", "/access/users/admin@pve/token/keep", data={"privsep": 0})
    assert node.stop(signal.SIGTERM) == 0
    assert node.etcd_pid() is None  # the private etcd stopped with it
    assert not (node.data_dir / "corrald.pid").exists()
    node.start()
    from tests.util import ApiSession

    t = ApiSession(node.url, node.ca).token(f"admin@pve!keep={tok['value']}")
    assert t.get("/nodes").json()["data"][0]["status"] == "online"
    assert node.session().get("/version").status_code == 200  # same admin password


def test_sigkilled_daemon_takes_its_etcd_with_it(fresh_corrald: Corrald) -> None:
    node = fresh_corrald
    etcd = node.etcd_pid()
    node.stop(signal.SIGKILL)
    wait_for(lambda: node.etcd_pid() is None, 15, 0.1, what="etcd gone after corrald SIGKILL")
    assert etcd is not None
    node.start()
    assert node.session().data("GET", "/cluster/status")[0]["quorate"] == 1
