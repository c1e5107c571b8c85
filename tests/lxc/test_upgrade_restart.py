"""What install.sh does when run again (issue 10 item 2): `corral restart` puts the
running node on the installed code; its containers keep running, same PID. The same
run checks issue 17's figures: a CT with memory=128 shows mem > 0, maxmem 128 MiB,
and the limit is in its own cgroup file, on whatever cgroup layout the host has."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.lxc import cgroups
from tests.lxc.helpers import cleanup_lxcpath
from tests.util import VENV_BIN, ApiSession, free_ports, wait_for

pytestmark = pytest.mark.timeout(300)


def corral(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "corral"), "--data-dir", str(data), *args],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def daemon_pid(data: Path) -> int:
    return int((data / "corrald.pid").read_text())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    data = tmp_path / "n"
    port = free_ports(1)
    for p in (tmp_path,):
        os.chmod(p, 0o755)  # an unprivileged CT's root must traverse it
    start = corral(data, "start", "--listen", f"127.0.0.1:{port}", "--node", "upnode",
                   "--etcd-port", str(free_ports(2)))  # fmt: skip
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        yield data, f"https://127.0.0.1:{port}"
    finally:
        corral(data, "stop")
        cleanup_lxcpath(str(data / "lxc"))


def test_restart_runs_new_daemon_and_keeps_the_container(node: tuple[Path, str]) -> None:
    data, url = node
    tpl = corral(data, "template", "build", "busybox")
    assert tpl.returncode == 0, tpl.stderr
    password = (data / "initial-admin-password").read_text().strip()
    api = ApiSession(url, str(data / "ssl" / "ca.pem")).login("admin@pve", password)
    vmid = random.randint(70000, 79999)
    ct = f"/nodes/upnode/lxc/{vmid}"
    api.run_task(
        "POST", "/nodes/upnode/lxc",
        data={"vmid": vmid, "ostemplate": tpl.stdout.strip(), "rootfs": "local:1",
              "memory": 128, "start": 1},
    )  # fmt: skip
    try:
        st = api.data("GET", f"{ct}/status/current")
        assert st["status"] == "running"
        assert st["maxmem"] == 128 << 20
        assert st["mem"] > 0, st
        pid = st["pid"]
        limit = "memory.max" if cgroups.layout() == "v2" else "memory.limit_in_bytes"
        assert int(cgroups.read(cgroups.file_for(pid, limit))) == 128 << 20

        before = daemon_pid(data)
        out = corral(data, "restart")
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"corrald restarted (pid {before} -> {daemon_pid(data)})" in out.stdout
        assert daemon_pid(data) != before
        assert not Path(f"/proc/{before}/cmdline").exists()
        api = ApiSession(url, str(data / "ssl" / "ca.pem")).login("admin@pve", password)
        st = wait_for(
            lambda: (s := api.data("GET", f"{ct}/status/current"))["status"] == "running" and s,
            30, 0.2, "the container seen running again",
        )  # fmt: skip
        assert st["pid"] == pid

        idle = corral(data, "stop")
        assert idle.returncode == 0
        again = corral(data, "restart", "--if-running")
        assert again.returncode == 0 and "not running" in again.stdout
        assert not (data / "corrald.pid").exists()
        os.kill(pid, 0)  # the container outlived the stopped daemon too
        assert corral(data, "start").returncode == 0
        api = ApiSession(url, str(data / "ssl" / "ca.pem")).login("admin@pve", password)
    finally:
        api.run_task("POST", f"{ct}/status/stop")
        api.run_task("DELETE", ct, params={"purge": 1})
