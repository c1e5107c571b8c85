"""Stock prometheus-pve-exporter, default collectors, against a real corrald.

The exporter runs as its users run it (its own CLI and HTTP server, configured
from the environment) and scrapes a node with a running container: every
default collector must succeed (200), and the container must show up with
its real figures — `maxcpu`, and `disk` measured on its own 1 GiB root
volume rather than on the host filesystem that holds it.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
from collections.abc import Iterator

import pytest
import requests

from tests.clients.conftest import NODE
from tests.util import VENV_BIN, Corrald, free_ports, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def container(node: Corrald, template: str) -> Iterator[int]:
    api = node.session()
    vmid = random.randint(60000, 60999)
    api.run_task(
        "POST",
        f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": template, "rootfs": "local:1", "memory": 64,
              "hostname": "scraped", "cores": 1, "start": 1},
    )  # fmt: skip
    try:
        yield vmid
    finally:
        api.run_task("POST", f"/nodes/{NODE}/lxc/{vmid}/status/stop")
        api.run_task("DELETE", f"/nodes/{NODE}/lxc/{vmid}")


@pytest.fixture(scope="module")
def exporter(node: Corrald) -> Iterator[str]:
    port = free_ports(1)
    env = {
        **os.environ,
        "PVE_USER": "admin@pve",
        "PVE_PASSWORD": node.password,
        "PVE_VERIFY_SSL": "false",
    }
    log = open(node.data_dir / "pve-exporter.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(VENV_BIN / "pve_exporter"), "--web.listen-address", f"127.0.0.1:{port}"],
        env=env,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url, timeout=5).ok, 60, 0.2, "pve_exporter listening")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _metric(text: str, metric: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {metric} with {labels} in:\n{text}")


def _rootfs_dir(node: Corrald, vmid: int) -> str:
    base = node.data_dir / "local" / "images" / str(vmid)
    (sub,) = [p for p in base.iterdir() if p.name.startswith(f"subvol-{vmid}-disk-")]
    return str(sub)


def test_default_collectors_scrape_a_running_container(
    node: Corrald, container: int, exporter: str
) -> None:
    vmid = container
    api = node.session()
    # A few MiB written inside the container must be counted on its root volume.
    subprocess.run(
        ["lxc-attach", "-P", str(node.data_dir / "lxc"), "-n", str(vmid), "--clear-env", "--",
         "dd", "if=/dev/zero", "of=/ballast", "bs=1M", "count=8"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    row = wait_for(
        lambda: next(
            (r for r in api.data("GET", "/cluster/resources", params={"type": "vm"})
             if r["vmid"] == vmid and r.get("status") == "running" and r["disk"] >= 8 << 20),
            None,
        ),
        # The tree's usage is recounted at most every usage.CACHE_SECONDS.
        90, 1, "CT running with its ballast counted in /cluster/resources",
    )  # fmt: skip
    assert row["maxcpu"] == 1
    r = requests.get(
        f"{exporter}/pve",
        params={"target": f"127.0.0.1:{node.port}", "cluster": "1", "node": "1"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    text = r.text
    labels = {"id": f"lxc/{vmid}", "node": NODE, "name": "scraped", "type": "lxc"}
    assert _metric(text, "pve_guest_info", **labels) == 1
    assert _metric(text, "pve_up", id=f"lxc/{vmid}") == 1
    assert _metric(text, "pve_cpu_usage_limit", id=f"lxc/{vmid}") == 1
    assert _metric(text, "pve_disk_size_bytes", id=f"lxc/{vmid}") == 1 << 30
    used = _metric(text, "pve_disk_usage_bytes", id=f"lxc/{vmid}")
    du = subprocess.run(
        ["du", "-s", "-x", "-B1", _rootfs_dir(node, vmid)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    real = int(du.stdout.split()[0])
    assert real >= 8 << 20
    assert abs(used - real) <= max(real * 0.1, 1 << 20), (used, real)
    # The node-level collectors answered as on a node without subscription or replication.
    assert _metric(text, "pve_subscription_status", id=f"node/{NODE}", status="notfound") == 1
    # Guests no backup job covers.
    assert _metric(text, "pve_not_backed_up_info", id=f"lxc/{vmid}") == 1


def test_monitoring_endpoints_answer_as_proxmox(node: Corrald, container: int) -> None:
    api = node.session()
    assert api.data("GET", f"/nodes/{NODE}/replication") == []
    sub = api.data("GET", f"/nodes/{NODE}/subscription")
    assert sub["status"] == "notfound" and sub["sockets"] >= 1
    rows = api.data("GET", "/cluster/backup-info/not-backed-up")
    assert {"vmid": container, "type": "lxc", "name": "scraped"} in rows
    assert api.data("GET", "/cluster/backup-info") == [{"subdir": "not-backed-up"}]
    r = api.get("/nodes/nosuchnode/subscription")
    assert r.status_code == 404
