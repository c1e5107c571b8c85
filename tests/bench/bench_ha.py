"""Benchmark HA in a 3-node lab: failover time after a node is killed, and whether
short network blips fence anything.

    /opt/corral/venv/bin/python tests/bench/bench_ha.py [--kills 10] [--vm-kills 5] [--blips 3]

Failover: an HA container (rootfs on the lab's shared storage) runs on some node;
that node is killed (`corral lab kill`: every process, a power loss); the clock
runs until liblxc on another node says the container runs. The killed node is
started again and the cluster settles before the next kill. Beside it, the raw
tool: the same container's plain start through the API, and Proxmox VE's
documented HA recovery (60 s watchdog + 120 s lock timeout: ~2-3 min).

The same for an HA VM (TCG, qcow2 disk and kernel on the shared storage),
until libvirt on another node reports it running.

Blips: the container's node loses its link for 0.5, 1 and 2 s (`corral lab
blip`); a fence shows as a new incarnation in the container's marker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.cluster import lab as labmod  # noqa: E402
from tests.lab.ha_helpers import (  # noqa: E402
    LabApi,
    create_marker_ct,
    incarnations,
    overlaps,
    running_on,
    template,
    wait,
)

PREFIX = "crlhb"
SUBNET = "10.249.90.0/24"


def settle(lab: labmod.Lab, vmid: int) -> str:
    def online() -> bool:
        try:
            return all(n["status"] == "online" for n in LabApi(lab, "node1").call("GET", "/nodes"))
        except Exception:  # noqa: BLE001
            return False

    wait(online, 90, "all nodes online", interval=0.5)
    time.sleep(3)
    where = running_on(lab, vmid)
    assert len(where) == 1, where
    return where[0]


def vm_failovers(lab: labmod.Lab, kills: int) -> list[float]:
    from tests.assets import guest

    vmid = 90410
    api = LabApi(lab, "node1")
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

    def running_at(via: str) -> str:
        try:
            rows = LabApi(lab, via).call("GET", "/cluster/ha/status/current")
            svc = next(r for r in rows if r["id"] == f"service:vm:{vmid}")
            node = svc["node"]
            st = LabApi(lab, via).call("GET", f"/nodes/{node}/qemu/{vmid}/status/current")
        except (AssertionError, StopIteration, OSError):
            return ""
        return str(node) if st["status"] == "running" else ""

    out = []
    for i in range(kills):
        victim = wait(lambda: running_at("node1") or running_at("node2"), 120, "HA VM running")
        via = next(n.name for n in lab.nodes if n.name != victim)
        t = time.monotonic()
        labmod.kill(lab, victim)
        where = wait(
            lambda v=victim, w=via: (n := running_at(w)) and n != v and n, 120, "VM failover"
        )
        out.append(time.monotonic() - t)
        print(f"VM kill {i + 1}: {victim} -> {where} in {out[-1]:.2f} s", flush=True)
        labmod.start_node(lab, lab.node(victim))
        settle_nodes(lab)
    api.call("PUT", f"/cluster/ha/resources/vm:{vmid}", state="stopped")
    return out


def settle_nodes(lab: labmod.Lab) -> None:
    def online() -> bool:
        try:
            return all(n["status"] == "online" for n in LabApi(lab, "node3").call("GET", "/nodes"))
        except Exception:  # noqa: BLE001
            return False

    wait(online, 90, "all nodes online", interval=0.5)
    time.sleep(3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--vm-kills", type=int, default=5)
    ap.add_argument("--blips", type=int, default=3, help="blips per duration")
    args = ap.parse_args()
    lab_dir = os.path.join(tempfile.mkdtemp(prefix="crl-bench-ha-"), "lab")
    lab = labmod.up(lab_dir, 3, SUBNET, PREFIX, out=open(os.devnull, "w"))  # noqa: SIM115
    vmid = 90400
    failovers: list[float] = []
    raw: list[float] = []
    fenced: dict[float, int] = {}
    try:
        api = LabApi(lab, "node1")
        root = create_marker_ct(api, "node1", vmid, template(lab))
        for _ in range(3):  # the raw tool: a plain start of the same container
            t = time.monotonic()
            api.task("POST", f"/nodes/node1/lxc/{vmid}/status/start")
            wait(lambda: running_on(lab, vmid) == ["node1"], 30, "plain start")
            raw.append(time.monotonic() - t)
            api.task("POST", f"/nodes/node1/lxc/{vmid}/status/stop")
        api.call("POST", "/cluster/ha/resources", sid=f"ct:{vmid}")
        wait(lambda: running_on(lab, vmid) == ["node1"], 30, "HA start")
        for i in range(args.kills):
            victim = settle(lab, vmid)
            t = time.monotonic()
            labmod.kill(lab, victim)
            where = wait(
                lambda v=victim: [n for n in running_on(lab, vmid) if n != v], 120, "failover"
            )
            failovers.append(time.monotonic() - t)
            print(f"kill {i + 1}: {victim} -> {where[0]} in {failovers[-1]:.2f} s", flush=True)
            labmod.start_node(lab, lab.node(victim))
        for seconds in (0.5, 1.0, 2.0):
            fenced[seconds] = 0
            for _ in range(args.blips):
                node = settle(lab, vmid)
                before = set(incarnations(root))
                labmod.blip(lab, node, seconds)
                time.sleep(10)  # past the agent lock's TTL
                if set(incarnations(root)) != before:
                    fenced[seconds] += 1
        settle(lab, vmid)
        bad = overlaps(root)
        api.call("PUT", f"/cluster/ha/resources/ct:{vmid}", state="stopped")
        vm = vm_failovers(lab, args.vm_kills) if args.vm_kills else []
    finally:
        labmod.down(lab_dir, quiet=True)
        shutil.rmtree(os.path.dirname(lab_dir), ignore_errors=True)

    def s(xs: list[float]) -> str:
        xs = sorted(xs)
        p95 = xs[min(len(xs) - 1, int(len(xs) * 0.95))]
        return f"median {statistics.median(xs):6.2f} s   p95 {p95:6.2f} s"

    print(f"HA CT failover, node killed -> running elsewhere ({len(failovers)} x): {s(failovers)}")
    if vm:
        print(f"HA VM failover, node killed -> running elsewhere ({len(vm)} x): {s(vm)}")
    print(f"raw tool: plain CT start through the API ({len(raw)} x):         {s(raw)}")
    print("Proxmox VE documented HA recovery: ~120-180 s (60 s watchdog + lock timeout)")
    for seconds, n in fenced.items():
        print(f"blip {seconds:.1f} s: {n} of {args.blips} fenced")
    print(f"overlapping incarnations on the shared marker: {len(bad)}")


if __name__ == "__main__":
    main()
