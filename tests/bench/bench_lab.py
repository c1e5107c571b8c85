"""Benchmark in a 3-node lab: how fast another node sees a guest's state change, and
the downtime of a container's restart migration.

    /opt/corral/venv/bin/python tests/bench/bench_lab.py [--rounds 5]

Propagation: a container on node1 is started/stopped through node1's API; the
clock runs from the moment node1's task reports the change done to the moment
node2's /cluster/resources shows it (Proxmox's pmxcfs view is up to ~10 s stale).
Downtime: from the migrate request until the container runs on the target, with
its root filesystem on the lab's shared storage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.cluster import lab as labmod  # noqa: E402
from corral.lxc import templates  # noqa: E402

PREFIX = "crlbn"
SUBNET = "10.249.80.0/24"


class Session:
    def __init__(self, lab: labmod.Lab, name: str) -> None:
        first = lab.nodes[0]
        self.base = f"{lab.node(name).url}api2/json"
        self.ca = str(Path(first.data_dir, "ssl", "ca.pem"))
        self.http = requests.Session()
        password = Path(first.data_dir, "initial-admin-password").read_text().strip()
        r = self.http.post(f"{self.base}/access/ticket", verify=self.ca, timeout=15,
                           data={"username": "admin@pve", "password": password})  # fmt: skip
        data = r.json()["data"]
        self.http.cookies.set("PVEAuthCookie", data["ticket"])
        self.http.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]

    def call(self, method: str, path: str, **data: Any) -> Any:
        kw: dict[str, Any] = {"params" if method == "GET" else "data": data}
        r = self.http.request(method, self.base + path, verify=self.ca, timeout=60, **kw)
        if r.status_code != 200:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json()["data"]

    def task(self, method: str, path: str, **data: Any) -> float:
        """Run a task; returns the monotonic time at which it was seen finished."""
        upid = self.call(method, path, **data)
        node = upid.split(":")[1]
        while True:
            st = self.call("GET", f"/nodes/{node}/tasks/{upid}/status")
            if st["status"] == "stopped":
                if st.get("exitstatus") != "OK":
                    raise RuntimeError(f"{upid}: {st.get('exitstatus')}")
                return time.monotonic()
            time.sleep(0.01)


def seen(s: Session, vmid: int, node: str, status: str, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in s.call("GET", "/cluster/resources", type="vm"):
            if row["vmid"] == vmid and row["node"] == node and row["status"] == status:
                return time.monotonic()
        time.sleep(0.005)
    raise RuntimeError(f"{vmid} never seen {status} on {node}")


def running(s: Session, node: str, vmid: int, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if s.call("GET", f"/nodes/{node}/lxc/{vmid}/status/current")["status"] == "running":
                return time.monotonic()
        except RuntimeError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{vmid} not running on {node}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    lab_dir = os.path.join(tempfile.mkdtemp(prefix="crl-bench-lab-"), "lab")
    t0 = time.monotonic()
    lab = labmod.up(lab_dir, 3, SUBNET, PREFIX, out=open(os.devnull, "w"))  # noqa: SIM115
    up_s = time.monotonic() - t0
    try:
        cache = Path(lab.dir, "shared", "template", "cache")
        archive = templates.build_busybox(str(cache), log=lambda _m: None)
        s1, s2 = Session(lab, "node1"), Session(lab, "node2")
        vmid = 90200
        s1.task("POST", "/nodes/node1/lxc", vmid=vmid, memory=64, rootfs="labshared:1",
                ostemplate=f"labshared:vztmpl/{os.path.basename(archive)}")  # fmt: skip
        lags: list[float] = []
        for _ in range(args.rounds):
            for op, status in (("start", "running"), ("stop", "stopped")):
                done = s1.task("POST", f"/nodes/node1/lxc/{vmid}/status/{op}")
                lags.append(seen(s2, vmid, "node1", status) - done)
        downtimes: list[float] = []
        s1.task("POST", f"/nodes/node1/lxc/{vmid}/status/start")
        here, there = "node1", "node2"
        for _ in range(args.rounds):
            t = time.monotonic()
            s2.task("POST", f"/nodes/{here}/lxc/{vmid}/migrate", target=there, restart=1)
            downtimes.append(running(s2, there, vmid) - t)
            here, there = there, here
        s1.task("POST", f"/nodes/{here}/lxc/{vmid}/status/stop")
        s1.task("DELETE", f"/nodes/{here}/lxc/{vmid}")
    finally:
        labmod.down(lab_dir, quiet=True)

    def ms(xs: list[float]) -> str:
        xs = sorted(xs)
        p95 = xs[min(len(xs) - 1, int(len(xs) * 0.95))]
        return f"median {statistics.median(xs) * 1000:7.0f} ms   p95 {p95 * 1000:7.0f} ms"

    print(f"lab up, 3 nodes:                              {up_s:6.1f} s")
    print(f"state change -> seen on another node ({len(lags)} x):  {ms(lags)}")
    print(f"CT restart migration downtime ({len(downtimes)} x):     {ms(downtimes)}")


if __name__ == "__main__":
    main()
