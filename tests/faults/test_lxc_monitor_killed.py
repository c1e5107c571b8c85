"""kill -9 of a running container's lxc monitor: the container keeps running,
the status stays truthful, and stop and destroy still work, leaving no process
of the container behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from corral.lxc import cgroups
from tests.faults.conftest import install_template
from tests.faults.world import NODE, assert_clean, guest_gone, lxc_names, start
from tests.util import Corrald, wait_for

pytestmark = pytest.mark.timeout(300)


def _procs(match: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if match.encode() in cmd:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    """Running, not a zombie: a dead init whose new parent (PID 1) does not reap
    it stays in /proc (the host's PID 1 here never reaps; tini in a container
    does, a moment later)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_lxc_monitor_killed_while_running(node: Corrald, vmid: int) -> None:
    start(node)
    template = install_template(node)
    s = node.session()
    base = f"/nodes/{NODE}/lxc/{vmid}"
    s.run_task(
        "POST",
        f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": template, "rootfs": "local:1"},
    )
    s.run_task("POST", f"{base}/status/start")
    init = s.data("GET", f"{base}/status/current")["pid"]
    groups = {d for d in cgroups.paths(init).values() if "lxc.payload" in d}
    assert groups
    monitors = _procs(f"[lxc monitor] {node.data_dir / 'lxc'} {vmid}")
    assert len(monitors) == 1, monitors
    os.kill(monitors[0], signal.SIGKILL)
    wait_for(lambda: not _procs(f"[lxc monitor] {node.data_dir / 'lxc'} {vmid}"), 10, 0.1,
             what="monitor gone")  # fmt: skip
    time.sleep(0.5)  # liblxc's default would SIGKILL the init now (pdeath signal)
    # The guest outlives its monitor (lxc.monitor.signal.pdeath = 0), and says so.
    assert _alive(init), "the container died with its lxc monitor"
    assert s.data("GET", f"{base}/status/current")["status"] == "running"
    # A second start must not boot the same container twice.
    r = s.post(f"{base}/status/start")
    if r.status_code == 200:
        assert s.wait_task(r.json()["data"])["exitstatus"] != "OK"
    assert _alive(init)
    s.run_task("POST", f"{base}/status/stop")
    wait_for(lambda: not _alive(init), 20, 0.1, what="init gone")
    assert s.data("GET", f"{base}/status/current")["status"] == "stopped"
    assert lxc_names(node, active=True) == set()
    # Its cgroups went with it (the monitor that would remove them is dead).
    assert not [d for d in groups if os.path.isdir(d)]
    # It starts again cleanly (the dead monitor's veth and records are not in the way).
    s.run_task("POST", f"{base}/status/start")
    assert s.data("GET", f"{base}/status/current")["status"] == "running"
    s.run_task("POST", f"{base}/status/stop")
    s.run_task("DELETE", base)
    guest_gone(node, s, vmid, node.data_dir / "local")
    assert_clean(node, s)
