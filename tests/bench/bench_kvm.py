"""KVM driver vs plain virsh, side by side in one run (not collected by pytest).

    /opt/corral/venv/bin/python tests/bench/bench_kvm.py [--rounds 3] [--boot]

Each round starts the same tiny TCG VM (Debian kernel + busybox initramfs,
128 MiB, one 11 MiB virtio disk, serial socket) twice:

- API: `POST /nodes/node1/qemu` (allocates the disk with qemu-img, writes the
  record, queues the task) then `POST .../status/start`, both waited for,
  against a real corrald on its own `qemu:///embed` root;
- virsh: `virsh -c qemu:///embed?root=... create` of the domain XML the
  driver renders for that same config (a pure function, so it is rendered
  here), on a second embed root, with the disk made beforehand.

The first round of each (QEMU capability probe of a fresh root) is reported
apart as "cold"; the figures are medians of the other rounds. `--boot` also
times until the guest's /init reports on the serial console.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.kvm.libvirt_conn import prepare_embed_root  # noqa: E402
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


def api_round(api: ApiSession, daemon: Corrald, vmid: int, config: dict, boot: bool) -> tuple:
    t = time.perf_counter()
    api.run_task("POST", f"/nodes/{NODE}/qemu", data={"vmid": vmid, **config}, timeout=300)
    created = time.perf_counter() - t
    api.run_task("POST", f"/nodes/{NODE}/qemu/{vmid}/status/start", timeout=300)
    running = time.perf_counter() - t
    booted = None
    if boot:
        _wait_file(daemon.data_dir / "qemu" / f"{vmid}.serial0.log", guest.MARKER_READY)
        booted = time.perf_counter() - t
    stored = api.data("GET", f"/nodes/{NODE}/qemu/{vmid}/config")
    return running, booted, created, stored


def api_cleanup(api: ApiSession, vmid: int) -> None:
    api.run_task("POST", f"/nodes/{NODE}/qemu/{vmid}/status/stop", timeout=120)
    api.run_task("DELETE", f"/nodes/{NODE}/qemu/{vmid}", timeout=120)


def raw_round(base: str, uri: str, vmid: int, stored: dict, files: dict, boot: bool) -> tuple:
    """The same config rendered for this root, started by `virsh create`."""
    image = f"{base}/raw/vm-{vmid}-disk-0.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", image, "11M"], check=True,
                   timeout=60)  # fmt: skip
    config = {k: v for k, v in stored.items() if k != "digest"}
    facts = Facts(vmid=vmid, name=f"crlkvm-bench-{vmid}", uuid=str(uuid.uuid4()),
                  run_dir=f"{base}/raw", files={"kernel": files["kernel"],
                                                "initrd": files["initrd"]})  # fmt: skip
    xml = render(config, {"virtio0": {"kind": "file", "path": image, "format": "raw"}}, facts)
    xml_path = f"{base}/raw/{vmid}.xml"
    Path(xml_path).write_text(xml)
    t = time.perf_counter()
    subprocess.run(["virsh", "-q", "-c", uri, "create", xml_path], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    running = time.perf_counter() - t
    booted = None
    if boot:
        _wait_file(Path(f"{base}/raw/{vmid}.serial0.log"), guest.MARKER_READY)
        booted = time.perf_counter() - t
    # A short-lived virsh that opens an embed root while libvirt reconnects to
    # its domains kills them on exit: the destroy may find the VM gone already.
    subprocess.run(["virsh", "-q", "-c", uri, "destroy", facts.name], capture_output=True,
                   timeout=120, check=False)  # fmt: skip
    kill_qemus_under(f"{base}/lvraw")
    os.unlink(image)
    return running, booted


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--boot", action="store_true", help="also time until /init reports")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="crlkvm-bench", dir="/tmp")
    api_uri, raw_uri = f"qemu:///embed?root={base}/lvapi", f"qemu:///embed?root={base}/lvraw"
    os.makedirs(f"{base}/raw")
    prepare_embed_root(f"{base}/lvraw")
    files = guest.build_guest(f"{base}/guest")
    daemon = Corrald(Path(base) / "node", node=NODE, extra=["--libvirt-uri", api_uri])
    results: dict[str, list[tuple]] = {"api": [], "raw": []}
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
            results["raw"].append(raw_round(base, raw_uri, vmid, stored, files, args.boot))
    finally:
        daemon.stop()
        virsh_cleanup(api_uri)
        virsh_cleanup(raw_uri)
        kill_qemus_under(base)
        shutil.rmtree(base, ignore_errors=True)

    def med(kind: str, i: int) -> float:
        return statistics.median(r[i] for r in results[kind][1:]) * 1000

    def row(label: str, api_ms: float, raw_ms: float) -> None:
        print(f"  {label:<30}{api_ms:10.0f} ms   {raw_ms:10.0f} ms")

    print(f"tiny TCG VM, {args.rounds} warm rounds (medians)   API create+start   virsh create")
    row("until running, cold (1st):", results["api"][0][0] * 1000, results["raw"][0][0] * 1000)
    row("until running:", med("api", 0), med("raw", 0))
    record("kvm", "VM create+start (TCG)", ours=med("api", 0), raw=med("raw", 0), unit="ms",
           raw_tool="virsh create")  # fmt: skip
    print(f"    of which the create task (disk, record): {med('api', 2):6.0f} ms")
    if args.boot:
        row("until /init reports:", med("api", 1), med("raw", 1))


if __name__ == "__main__":
    main()
