"""Helpers for HA in a lab: an HA container that leaves a marker on shared storage,
where it runs (as liblxc on each node says), and the marker's verdict.

The marker: the container's init runs a loop that appends "<incarnation> <host
uptime>" to /ha-marker in its rootfs (a directory on `labshared`) ten times a
second. An incarnation is a random ID drawn at container start; the host's
uptime is one clock for every node of the lab. Two copies running at once would
interleave their lines: `overlaps` finds that.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import requests

from corral.cluster import lab as labmod
from corral.lxc import templates

MARKER_SCRIPT = """#!/bin/sh
id=$(cat /proc/sys/kernel/random/uuid)
while :; do
    echo "$id $(cut -d' ' -f1 /proc/uptime)" >> /ha-marker
    usleep 100000
done
"""


class LabApi:
    """A logged-in session to one lab node (CA-verified)."""

    def __init__(self, lab: labmod.Lab, via: str = "node1") -> None:
        self.lab, self.via = lab, via
        first = lab.nodes[0]
        self.ca = str(Path(first.data_dir, "ssl", "ca.pem"))
        self.s = requests.Session()
        password = Path(first.data_dir, "initial-admin-password").read_text().strip()
        r = self.s.post(
            f"{self.url}api2/json/access/ticket",
            data={"username": "admin@pve", "password": password},
            timeout=15,
            verify=self.ca,
        )
        r.raise_for_status()
        data = r.json()["data"]
        self.s.cookies.set("PVEAuthCookie", data["ticket"])
        self.s.headers["CSRFPreventionToken"] = data["CSRFPreventionToken"]

    @property
    def url(self) -> str:
        return self.lab.node(self.via).url

    def call(self, method: str, path: str, **params: Any) -> Any:
        kw: dict[str, Any] = {"params" if method in ("GET", "DELETE") else "data": params}
        r = self.s.request(method, f"{self.url}api2/json{path}", timeout=30, verify=self.ca, **kw)
        if r.status_code != 200:
            raise AssertionError(f"{method} {path}: {r.status_code} {r.text}")
        return r.json()["data"]

    def task(self, method: str, path: str, **params: Any) -> dict[str, Any]:
        upid = self.call(method, path, **params)
        node = upid.split(":")[1]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = self.call("GET", f"/nodes/{node}/tasks/{upid}/status")
            if st["status"] == "stopped":
                assert st.get("exitstatus") == "OK", st
                return dict(st)
            time.sleep(0.1)
        raise AssertionError(f"task {upid} did not finish")


def template(lab: labmod.Lab) -> str:
    cache = Path(lab.dir, "shared", "template", "cache")
    archive = templates.build_busybox(str(cache), log=lambda _m: None)
    return f"{labmod.SHARED_STORAGE}:vztmpl/{os.path.basename(archive)}"


def rootfs_dir(lab: labmod.Lab, vmid: int) -> Path:
    found = sorted(Path(lab.dir, "shared", "images", str(vmid)).glob(f"subvol-{vmid}-disk-*"))
    assert found, f"no rootfs directory of CT {vmid} on {labmod.SHARED_STORAGE}"
    return found[0]


def create_marker_ct(api: LabApi, node: str, vmid: int, tmpl: str) -> Path:
    """A stopped CT on `node` with its rootfs on labshared and the marker loop in its init."""
    api.task(
        "POST", f"/nodes/{node}/lxc", vmid=vmid, hostname=f"ha{vmid}", memory=64,
        ostemplate=tmpl, rootfs=f"{labmod.SHARED_STORAGE}:1",
    )  # fmt: skip
    root = rootfs_dir(api.lab, vmid)
    (root / "marker.sh").write_text(MARKER_SCRIPT)
    (root / "marker.sh").chmod(0o755)
    with open(root / "etc" / "inittab", "a") as fh:
        fh.write("::once:/marker.sh\n")
    return root


def running_on(lab: labmod.Lab, vmid: int) -> list[str]:
    """Nodes where liblxc itself says the CT runs (not what corral believes)."""
    out = []
    for n in lab.nodes:
        if n.netns and labmod._netns_inode(n.netns) is None:
            continue
        lxcpath = str(Path(n.data_dir, "lxc"))
        proc = subprocess.run(
            labmod.in_node(n, ["lxc-ls", "-P", lxcpath, "--running", "-1"]),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if str(vmid) in proc.stdout.split():
            out.append(n.name)
    return out


def incarnations(root: Path) -> dict[str, tuple[float, float]]:
    """incarnation -> (first, last) host uptime it wrote."""
    spans: dict[str, tuple[float, float]] = {}
    try:
        lines = (root / "ha-marker").read_text().splitlines()
    except FileNotFoundError:
        return spans
    for line in lines:
        parts = line.split()
        if len(parts) != 2:
            continue  # a line cut by a kill
        try:
            t = float(parts[1])
        except ValueError:
            continue
        first, last = spans.get(parts[0], (t, t))
        spans[parts[0]] = (min(first, t), max(last, t))
    return spans


def overlaps(root: Path) -> list[tuple[str, str]]:
    """Pairs of incarnations whose running times overlap (two copies at once)."""
    spans = sorted(incarnations(root).items(), key=lambda kv: kv[1][0])
    bad = []
    for (a, (_, a_end)), (b, (b_start, _)) in zip(spans, spans[1:], strict=False):
        if b_start <= a_end:
            bad.append((a, b))
    return bad


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
