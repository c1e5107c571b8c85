"""HA in a real 3-node lab: a killed node's HA container runs elsewhere well within
30 s and exactly once after the node returns; a partitioned node's HA container is
stopped there before it starts elsewhere; a short blip fences nothing.

"Exactly once" is read from liblxc on every node and from a marker the container
writes to shared storage (tests/lab/ha_helpers.py): incarnations never overlap.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import lab as labmod
from tests.lab.ha_helpers import (
    LabApi,
    create_marker_ct,
    incarnations,
    overlaps,
    running_on,
    template,
    wait,
)

PREFIX = "crlh"
SUBNET = "10.249.88.0/24"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[labmod.Lab]:
    lab_dir = str(tmp_path_factory.mktemp("halab") / "lab")
    labmod.down(lab_dir, quiet=True)
    groups_before = _guest_groups()
    lab = labmod.up(lab_dir, 3, SUBNET, PREFIX)
    yield lab
    keep = tmp_path_factory.mktemp("halab-logs")  # the nodes' logs, for a post-mortem
    for n in lab.nodes:
        log = Path(n.data_dir, "corrald.log")
        if log.exists():
            shutil.copy(log, keep / f"{n.name}.log")
    labmod.down(lab_dir, quiet=True)
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    assert PREFIX not in netns.stdout
    assert not Path(lab_dir).exists()
    # A killed node's lxc monitors and embedded libvirt cannot remove their guests'
    # cgroups: the lab does.
    assert _guest_groups() <= groups_before


def _guest_groups() -> set[Path]:
    """The groups of containers (liblxc's) and of VMs (embedded libvirts'), in every
    cgroup hierarchy."""
    points = labmod.cgroup_mount_points(Path("/proc/self/mountinfo").read_text())
    return {
        g
        for p in points
        for pattern in ("machine/qemu-embed-*", "lxc.payload.*", "lxc.monitor.*")
        for g in Path(p).glob(pattern)
    }


@pytest.fixture(scope="module")
def tmpl(lab: labmod.Lab) -> str:
    return template(lab)


def _ha_ct(api: LabApi, node: str, vmid: int, tmpl: str) -> Path:
    root = create_marker_ct(api, node, vmid, tmpl)
    api.call("POST", "/cluster/ha/resources", sid=f"ct:{vmid}", state="started")
    wait(lambda: running_on(api.lab, vmid) == [node], 30, f"HA CT {vmid} running on {node}")
    wait(lambda: incarnations(root), 10, "the marker")
    return root


def _service(api: LabApi, vmid: int, kind: str = "ct") -> dict[str, object]:
    rows = api.call("GET", "/cluster/ha/status/current")
    return next(r for r in rows if r["id"] == f"service:{kind}:{vmid}")


def _wait_online(lab: labmod.Lab, via: str) -> None:
    def online() -> bool:
        try:
            nodes = LabApi(lab, via).call("GET", "/nodes")
        except Exception:  # noqa: BLE001 - not answering yet
            return False
        return all(n["status"] == "online" for n in nodes)

    wait(online, 60, "all nodes online", interval=0.5)


def test_killed_node_ha_ct_runs_elsewhere_then_exactly_once(lab: labmod.Lab, tmpl: str) -> None:
    vmid = 90300
    api = LabApi(lab, "node2")
    root = _ha_ct(api, "node1", vmid, tmpl)
    killed = time.monotonic()
    labmod.kill(lab, "node1")
    where = wait(
        lambda: [n for n in running_on(lab, vmid) if n != "node1"], 60, "recovery elsewhere"
    )
    took = time.monotonic() - killed
    print(f"HA CT {vmid}: node1 killed -> running on {where[0]} after {took:.2f} s")
    assert took < 30
    assert _service(api, vmid)["node"] == where[0]
    labmod.start_node(lab, lab.node("node1"))
    _wait_online(lab, "node2")
    time.sleep(3)  # node1's LRM and the CRM have had several rounds
    for _ in range(10):
        assert running_on(lab, vmid) == where
        time.sleep(0.3)
    assert overlaps(root) == []
    assert len(incarnations(root)) == 2


def test_partitioned_node_stops_its_ha_ct_before_it_starts_elsewhere(
    lab: labmod.Lab, tmpl: str
) -> None:
    vmid = 90301
    api = LabApi(lab, "node1")
    root = _ha_ct(api, "node3", vmid, tmpl)
    labmod.partition(lab, "node3", cut=True)
    cut = time.monotonic()
    try:
        where = wait(
            lambda: [n for n in running_on(lab, vmid) if n != "node3"], 60, "recovery elsewhere"
        )
        took = time.monotonic() - cut
        print(f"HA CT {vmid}: node3 cut off -> running on {where[0]} after {took:.2f} s")
        assert "node3" not in running_on(lab, vmid)  # its watchdog killed it there
        spans = incarnations(root)
        assert len(spans) == 2 and overlaps(root) == []
        old, new = sorted(spans.values())
        print(f"gap between the two copies: {new[0] - old[1]:.2f} s")
    finally:
        labmod.partition(lab, "node3", cut=False)
    _wait_online(lab, "node1")
    time.sleep(3)
    assert running_on(lab, vmid) == where
    assert overlaps(root) == []


def test_blip_under_two_seconds_fences_nothing(lab: labmod.Lab, tmpl: str) -> None:
    vmid = 90302
    api = LabApi(lab, "node1")
    root = _ha_ct(api, "node2", vmid, tmpl)
    before = incarnations(root)
    took = labmod.blip(lab, "node2", 1.5)
    print(f"blip of node2: {took:.2f} s")
    time.sleep(10)  # longer than the agent lock's TTL: a fence would have happened
    assert running_on(lab, vmid) == ["node2"]
    after = incarnations(root)
    assert list(after) == list(before)  # the same incarnation, never restarted
    assert _service(api, vmid)["state"] == "started"


def _qemu_copies(vmid: int) -> int:
    """QEMU processes of this VM anywhere on the host (every node's, every copy)."""
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and f"guest=corral-{vmid},".encode() in cmd:
            count += 1
    return count


@pytest.mark.timeout(600)
def test_killed_node_ha_vm_runs_elsewhere_once(lab: labmod.Lab) -> None:
    from tests.assets import guest

    vmid = 90310
    api = LabApi(lab, "node2")
    files = guest.build_guest(Path(lab.dir, "guest"))
    snippets = Path(lab.dir, "shared", "snippets")
    snippets.mkdir(parents=True, exist_ok=True)
    shutil.copy(files["kernel"], snippets / "vmlinuz")
    shutil.copy(files["initrd"], snippets / "initrd.img")
    shared = labmod.SHARED_STORAGE
    api.task(
        "POST", "/nodes/node1/qemu", vmid=vmid, name="havm", kvm=0, memory=128, cores=1,
        scsi0=f"{shared}:1,format=qcow2", kernel=f"{shared}:snippets/vmlinuz",
        initrd=f"{shared}:snippets/initrd.img", cmdline=files["cmdline"],
    )  # fmt: skip
    api.call("POST", "/cluster/ha/resources", sid=f"vm:{vmid}")

    def running_at() -> str:
        try:  # a busy etcd may change leaders and answer one call with 503
            svc = _service(api, vmid, "vm")
            node = str(svc["node"])
            st = api.call("GET", f"/nodes/{node}/qemu/{vmid}/status/current")
        except AssertionError:
            return ""
        return node if st["status"] == "running" and svc["state"] == "started" else ""

    wait(lambda: running_at() == "node1", 60, "HA VM running on node1")
    assert _qemu_copies(vmid) == 1
    killed = time.monotonic()
    labmod.kill(lab, "node1")
    where = wait(lambda: (n := running_at()) and n != "node1" and n, 90, "VM recovered")
    took = time.monotonic() - killed
    print(f"HA VM {vmid}: node1 killed -> running on {where} after {took:.2f} s")
    assert took < 30
    assert _qemu_copies(vmid) == 1
    labmod.start_node(lab, lab.node("node1"))
    _wait_online(lab, "node2")
    time.sleep(3)
    assert running_at() == where and _qemu_copies(vmid) == 1
    api.call("PUT", f"/cluster/ha/resources/vm:{vmid}", state="stopped")
    wait(lambda: _qemu_copies(vmid) == 0, 60, "HA VM stopped")
