"""KVM through the API vs libvirt itself, side by side in one run (not collected by pytest).

    /opt/corral/venv/bin/python tests/bench/bench_kvm.py [--rounds 3] [--boot]

1. create+start: each round starts the same tiny TCG VM (Debian kernel +
   busybox initramfs, 128 MiB, one 11 MiB virtio disk, serial socket) twice:
   - API: `POST /nodes/node1/qemu` (allocates the disk with qemu-img, writes
     the record, queues the task) then `POST .../status/start`, both waited
     for, against a real corrald on its own `qemu:///embed` root;
   - raw: `defineXML` + `create` of the domain XML the driver renders for that
     same config (a pure function, so it is rendered here) on a second embed
     root, through one libvirt connection this process keeps open, as corrald
     keeps its own; the disk is made beforehand.
   The first round of each (QEMU capability probe of a fresh root) is reported
   apart as "cold"; the figures are medians of the other rounds. `--boot` also
   times until the guest's /init reports on the serial console.
2. start and stop of ONE existing VM, rounds interleaved: `status/start` and
   `status/stop` submitted -> task OK, against `create()` / `destroy()` of the
   same domain definition on the raw root.

Why not `virsh -c qemu:///embed?... create`: each virsh process brings the
embedded QEMU driver up anew (about 4 s of capability loading before it does
anything), and the VM it started dies with it. That measured virsh's start-up,
not starting a VM; the previous report's 4 s "warm virsh" rounds were that.
Clients here poll task status every 10 ms (bench_lxc does the same).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.kvm.libvirt_conn import ensure_event_loop, prepare_embed_root  # noqa: E402
from corral.kvm.xml_base import Facts  # noqa: E402
from corral.kvm.xml_domain import render  # noqa: E402
from tests.assets import guest  # noqa: E402
from tests.bench.results import record  # noqa: E402
from tests.kvm.conftest import kill_qemus_under, virsh_cleanup  # noqa: E402
from tests.util import ApiSession, Corrald  # noqa: E402

NODE = "node1"


def _wait_file(path: Path, marker: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and marker in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{marker} not seen in {path}")


def run_task(api: ApiSession, method: str, path: str, timeout: float = 300, **kw: Any) -> None:
    """Submit and poll every 10 ms until the task ends; it must end OK."""
    upid = api.data(method, path, **kw)
    deadline = time.monotonic() + timeout
    while True:
        st = api.data("GET", f"/nodes/{NODE}/tasks/{upid}/status")
        if st["status"] == "stopped":
            if st.get("exitstatus") != "OK":
                raise RuntimeError(f"{method} {path}: {st.get('exitstatus')}")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{method} {path}: still running after {timeout:.0f} s")
        time.sleep(0.01)


def api_round(api: ApiSession, daemon: Corrald, vmid: int, config: dict, boot: bool) -> tuple:
    t = time.perf_counter()
    run_task(api, "POST", f"/nodes/{NODE}/qemu", data={"vmid": vmid, **config})
    created = time.perf_counter() - t
    run_task(api, "POST", f"/nodes/{NODE}/qemu/{vmid}/status/start")
    running = time.perf_counter() - t
    booted = None
    if boot:
        _wait_file(daemon.data_dir / "qemu" / f"{vmid}.serial0.log", guest.MARKER_READY)
        booted = time.perf_counter() - t
    stored = api.data("GET", f"/nodes/{NODE}/qemu/{vmid}/config")
    return running, booted, created, stored


def api_cleanup(api: ApiSession, vmid: int) -> None:
    run_task(api, "POST", f"/nodes/{NODE}/qemu/{vmid}/status/stop")
    run_task(api, "DELETE", f"/nodes/{NODE}/qemu/{vmid}")


def raw_domain_xml(base: str, vmid: int, stored: dict, files: dict) -> tuple[str, str]:
    """The domain XML the driver renders for `stored`, for the raw root; its image."""
    image = f"{base}/raw/vm-{vmid}-disk-0.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", image, "11M"], check=True,
                   timeout=60)  # fmt: skip
    config = {k: v for k, v in stored.items() if k != "digest"}
    facts = Facts(vmid=vmid, name=f"crlkvm-bench-{vmid}", uuid=str(uuid.uuid4()),
                  run_dir=f"{base}/raw", files={"kernel": files["kernel"],
                                                "initrd": files["initrd"]})  # fmt: skip
    disks = {"virtio0": {"kind": "file", "path": image, "format": "raw"}}
    return render(config, disks, facts), image


def raw_round(
    conn: libvirt.virConnect, base: str, vmid: int, stored: dict, files: dict, boot: bool
) -> tuple:
    """The same config rendered for the raw root, defined and started over the open
    connection (what the driver does: defineXML, then create)."""
    xml, image = raw_domain_xml(base, vmid, stored, files)
    t = time.perf_counter()
    dom = conn.defineXML(xml)
    dom.create()
    running = time.perf_counter() - t
    booted = None
    if boot:
        _wait_file(Path(f"{base}/raw/{vmid}.serial0.log"), guest.MARKER_READY)
        booted = time.perf_counter() - t
    dom.destroy()
    dom.undefine()
    os.unlink(image)
    return running, booted


def start_stop_same(
    api: ApiSession, conn: libvirt.virConnect, base: str, config: dict, files: dict, rounds: int
) -> None:
    """One VM through the API and its twin on the raw root, started and stopped in turn."""
    vmid = 89900
    run_task(api, "POST", f"/nodes/{NODE}/qemu", data={"vmid": vmid, **config})
    stored = api.data("GET", f"/nodes/{NODE}/qemu/{vmid}/config")
    xml, image = raw_domain_xml(base, vmid, stored, files)
    dom = conn.defineXML(xml)
    one = f"/nodes/{NODE}/qemu/{vmid}"
    timings: dict[str, list[float]] = {"api start": [], "api stop": [], "raw start": [],
                                       "raw stop": []}  # fmt: skip
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            run_task(api, "POST", f"{one}/status/start")
            t1 = time.perf_counter()
            run_task(api, "POST", f"{one}/status/stop")
            t2 = time.perf_counter()
            dom.create()
            t3 = time.perf_counter()
            dom.destroy()
            t4 = time.perf_counter()
            for key, value in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                timings[key].append(value * 1000)
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefine()
        os.unlink(image)
        run_task(api, "DELETE", one)
    med = {k: statistics.median(v) for k, v in timings.items()}
    print(f"same VM, medians of {rounds} rounds      API         raw libvirt   ratio")
    for op in ("start", "stop"):
        api_ms, raw_ms = med[f"api {op}"], med[f"raw {op}"]
        print(f"  VM {op:<29}{api_ms:8.1f} ms {raw_ms:9.1f} ms {api_ms / raw_ms:8.2f}x")
        raw_tool = "libvirt create()" if op == "start" else "libvirt destroy()"
        record("kvm", f"VM {op} (same VM, TCG)", ours=api_ms, raw=raw_ms, unit="ms",
               raw_tool=raw_tool + " on an open connection")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--boot", action="store_true", help="also time until /init reports")
    ap.add_argument("--same", type=int, default=10, help="rounds of start/stop of one VM")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="crlkvm-bench", dir="/tmp")
    api_uri, raw_uri = f"qemu:///embed?root={base}/lvapi", f"qemu:///embed?root={base}/lvraw"
    os.makedirs(f"{base}/raw")
    prepare_embed_root(f"{base}/lvraw")
    files = guest.build_guest(f"{base}/guest")
    daemon = Corrald(Path(base) / "node", node=NODE, extra=["--libvirt-uri", api_uri])
    results: dict[str, list[tuple]] = {"api": [], "raw": []}
    ensure_event_loop()
    conn = libvirt.open(raw_uri)  # kept open, as corrald keeps its connection
    try:
        daemon.start()
        snippets = daemon.data_dir / "local" / "snippets"
        shutil.copy(files["kernel"], snippets / "vmlinuz")
        shutil.copy(files["initrd"], snippets / "initrd.img")
        api = daemon.session()
        config = {
            "memory": 128, "kvm": 0, "serial0": "socket", "tablet": 0, "vga": "serial0",
            "virtio0": "local:0.01", "kernel": "local:snippets/vmlinuz",
            "initrd": "local:snippets/initrd.img", "cmdline": files["cmdline"],
        }  # fmt: skip
        for n in range(args.rounds + 1):
            vmid = 89000 + n
            running, booted, created, stored = api_round(api, daemon, vmid, config, args.boot)
            results["api"].append((running, booted, created))
            api_cleanup(api, vmid)
            results["raw"].append(raw_round(conn, base, vmid, stored, files, args.boot))
        if args.same:
            start_stop_same(api, conn, base, config, files, args.same)
    finally:
        for dom in conn.listAllDomains():
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()
        daemon.stop()
        virsh_cleanup(api_uri)
        virsh_cleanup(raw_uri)
        kill_qemus_under(base)
        shutil.rmtree(base, ignore_errors=True)

    def med(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in results[kind][1:]) * 1000

    def row(label: str, api_ms: float, raw_ms: float) -> None:
        print(f"  {label:<30}{api_ms:10.0f} ms   {raw_ms:10.0f} ms")

    print(f"tiny TCG VM, {args.rounds} warm rounds (medians)   API create+start   libvirt")
    row("until running, cold (1st):", results["api"][0][0] * 1000, results["raw"][0][0] * 1000)
    row("until running:", med("api", 0), med("raw", 0))
    record("kvm", "VM create+start (TCG)", ours=med("api", 0), raw=med("raw", 0), unit="ms",
           raw_tool="libvirt defineXML + create on an open connection")  # fmt: skip
    print(f"    of which the create task (disk, record): {med('api', 2):6.0f} ms")
    if args.boot:
        row("until /init reports:", med("api", 1), med("raw", 1))


if __name__ == "__main__":
    main()
