"""Backup and restore throughput beside the raw tools, in one run (not collected by pytest).

    /opt/corral/venv/bin/python tests/bench/bench_backup.py [--mib 256] [--rounds 3]

A real corrald (its own etcd, LXC and QEMU drivers, `local` dir storage) in
a temp dir. The same data — files copied from /usr/lib, `--mib` MiB — fills
a stopped busybox CT's root and a stopped VM's raw disk. Medians of
`--rounds` of:

- CT backup (POST vzdump, zstd, task start to OK) vs `tar -cf - -C ROOT . |
  zstd -T1` of the same root; CT restore (POST lxc restore=1, to a new VMID)
  vs `zstd -dc | tar -xf -`;
- VM backup (zstd) vs `qemu-img convert -O raw DISK` + `tar | zstd -T1`;
  VM restore (POST qemu archive=) vs `zstd -dc | tar -xf -` + `qemu-img
  convert` into place.

MiB/s are of the guest's data (the root's bytes, the disk's size).
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
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from proxmoxer import ProxmoxAPI  # noqa: E402
from proxmoxer.tools import Tasks  # noqa: E402

from tests.kvm.conftest import kill_qemus_under, virsh_cleanup  # noqa: E402
from tests.lxc.helpers import cleanup_lxcpath  # noqa: E402
from tests.util import VENV_BIN, Corrald  # noqa: E402

NODE = "node1"
MiB = 1 << 20


def sh(cmd: str) -> None:
    # The raw-tool pipelines are fixed strings built here from temp paths only.
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"{cmd}: {proc.stderr.decode(errors='replace')}")


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fill_tree(dst: Path, limit: int) -> int:
    """Copy regular files from /usr/lib into `dst` until `limit` bytes."""
    total = 0
    for root, _dirs, files in os.walk("/usr/lib"):
        for name in sorted(files):
            src = os.path.join(root, name)
            if os.path.islink(src) or not os.path.isfile(src):
                continue
            size = os.path.getsize(src)
            if total + size > limit:
                continue
            target = dst / "data" / os.path.relpath(src, "/usr/lib")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            total += size
            if total >= limit * 0.98:
                return total
    return total


def fill_disk(path: Path, tree: Path, size: int) -> None:
    """Write the files of `tree` one after the other into the raw disk at `path`."""
    with open(path, "r+b") as out:
        for root, _dirs, files in os.walk(tree):
            for name in sorted(files):
                with open(os.path.join(root, name), "rb") as fh:
                    data = fh.read()
                if out.tell() + len(data) > size:
                    return
                out.write(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="crlbb", dir="/tmp"))
    os.chmod(base, 0o755)
    root = f"{base}/lv"
    uri = f"qemu:///embed?root={root}"
    node = Corrald(base / "node", node=NODE, extra=["--libvirt-uri", uri])
    try:
        node.start()
        run(node, base, args)
    finally:
        node.stop()
        cleanup_lxcpath(str(node.data_dir / "lxc"))
        virsh_cleanup(uri)
        kill_qemus_under(root)
        shutil.rmtree(base, ignore_errors=True)


def run(node: Corrald, base: Path, args: argparse.Namespace) -> None:
    prox = ProxmoxAPI("127.0.0.1", user="admin@pve", password=node.password,
                      verify_ssl=False, port=node.port, timeout=120)  # fmt: skip
    n = prox.nodes(NODE)

    def task(upid: str) -> float:
        t0 = time.perf_counter()
        st = Tasks.blocking_status(prox, upid, timeout=3600, polling_interval=0.05)
        assert st and st["exitstatus"] == "OK", (st, n.tasks(upid).log.get(limit=50))
        return time.perf_counter() - t0

    env = {**os.environ, "CORRAL_DATA_DIR": str(node.data_dir)}
    tpl = subprocess.run([str(VENV_BIN / "corral"), "--data-dir", str(node.data_dir), "template",
                          "build", "busybox"], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout.strip()  # fmt: skip
    local = node.data_dir / "local"
    dump = local / "dump"
    work = base / "raw"
    work.mkdir()

    # -- the CT ------------------------------------------------------------------------
    ct = 90001
    task(n.lxc.create(vmid=ct, ostemplate=tpl, rootfs="local:1", memory=64))
    ct_root = local / "images" / str(ct) / f"subvol-{ct}-disk-0.subvol"
    data = fill_tree(ct_root, args.mib * MiB)
    print(f"data: {data / MiB:.0f} MiB of /usr/lib files, {args.rounds} rounds, medians\n")
    rows: list[tuple[str, float, float]] = []

    def measure(label: str, corral: Any, raw: Any, size: int) -> None:
        ours = statistics.median(corral() for _ in range(args.rounds))
        tool = statistics.median(raw() for _ in range(args.rounds))
        rows.append((label, size / MiB / ours, size / MiB / tool))

    def ct_backup() -> float:
        for f in dump.glob("*"):
            f.unlink()
        took = task(n.vzdump.post(vmid=ct, storage="local", compress="zstd", mode="stop"))
        time.sleep(1.05)  # one archive name per second
        return took

    raw_tar = f"tar -cf - -C {ct_root} . | zstd -q -T1 > {work}/ct.tar.zst"
    measure("CT backup (zstd)", ct_backup, lambda: timed(lambda: sh(raw_tar)), data)
    (archive,) = dump.glob("vzdump-lxc-*")
    sizes = [("CT", archive.stat().st_size, (work / "ct.tar.zst").stat().st_size)]
    volid = f"local:backup/{archive.name}"
    restored = iter(range(90100, 90200))

    def ct_restore() -> float:
        vmid = next(restored)
        took = task(n.lxc.create(vmid=vmid, ostemplate=volid, restore=1, storage="local"))
        task(n.lxc(vmid).delete())
        return took

    def raw_ct_restore() -> float:
        dst = work / "ctroot"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        took = timed(lambda: sh(f"zstd -q -dc {work}/ct.tar.zst | tar -xf - -C {dst}"))
        shutil.rmtree(dst)
        return took

    measure("CT restore (zstd)", ct_restore, raw_ct_restore, data)
    task(n.lxc(ct).delete())

    # -- the VM ------------------------------------------------------------------------
    vm = 90002
    size = args.mib * MiB
    task(n.qemu.create(vmid=vm, memory=64, kvm=0, virtio0=f"local:{args.mib / 1024:.4f}"))
    disk = next((local / "images" / str(vm)).glob("vm-*"))
    fill_disk(disk, ct_root if ct_root.exists() else Path("/usr/lib"), os.path.getsize(disk))
    size = os.path.getsize(disk)

    def vm_backup() -> float:
        for f in dump.glob("*"):
            f.unlink()
        took = task(n.vzdump.post(vmid=vm, storage="local", compress="zstd"))
        time.sleep(1.05)
        return took

    def raw_vm_backup() -> float:
        return timed(lambda: sh(f"qemu-img convert -f raw -O raw {disk} {work}/disk.raw && "
                                f"tar -cf - -C {work} disk.raw | zstd -q -T1 > {work}/vm.tar.zst "
                                f"&& rm {work}/disk.raw"))  # fmt: skip

    measure("VM backup (zstd)", vm_backup, raw_vm_backup, size)
    (archive,) = dump.glob("vzdump-qemu-*")
    sizes.append(("VM", archive.stat().st_size, (work / "vm.tar.zst").stat().st_size))
    volid = f"local:backup/{archive.name}"

    def vm_restore() -> float:
        vmid = next(restored)
        took = task(n.qemu.create(vmid=vmid, archive=volid, storage="local"))
        task(n.qemu(vmid).delete())
        return took

    def raw_vm_restore() -> float:
        return timed(lambda: sh(f"zstd -q -dc {work}/vm.tar.zst | tar -xf - -C {work} && "
                                f"qemu-img convert -f raw -O raw {work}/disk.raw {work}/placed.raw "
                                f"&& rm {work}/disk.raw {work}/placed.raw"))  # fmt: skip

    measure("VM restore (zstd)", vm_restore, raw_vm_restore, size)
    task(n.qemu(vm).delete())
    sparse_rows = sparse_disk(n, task, local, dump, work, ct_root, args.rounds)
    print(f"{'operation':<20} {'corral MiB/s':>13} {'raw tools MiB/s':>16} {'ratio':>6}")
    for label, ours, tool in rows:
        print(f"{label:<20} {ours:>13.1f} {tool:>16.1f} {ours / tool:>6.2f}")
    for kind, ours_b, tool_b in sizes:
        print(f"{kind} archive: corral {ours_b / MiB:.1f} MiB, raw tools {tool_b / MiB:.1f} MiB")
    print(f"\nmostly empty disk (2 GiB, {SPARSE_DATA // MiB} MiB of data): "
          "archive MiB, seconds (median)")  # fmt: skip
    print(f"{'compress':<9} {'corral':>15} {'tar (plain)':>15} {'tar -S (sparse)':>16}")
    for compress, cells in sparse_rows:
        line = " ".join(f"{mib:>8.1f} {sec:>6.2f}" for mib, sec in cells)
        print(f"{compress:<9} {line}")


SPARSE_DATA = 20 * MiB


def sparse_disk(n: Any, task: Any, local: Path, dump: Path, work: Path, tree: Path,
                rounds: int) -> list[tuple[str, list[tuple[float, float]]]]:  # fmt: skip
    """A 2 GiB raw disk with 16 MiB at its start and 4 MiB at 1 GiB: corral's archive
    beside plain tar (the layout corral had before: the whole image) and GNU tar -S."""
    vm = 90003
    task(n.qemu.create(vmid=vm, memory=64, kvm=0, virtio0="local:2,format=raw"))
    disk = next((local / "images" / str(vm)).glob("vm-*"))
    fill_disk(disk, tree if tree.exists() else Path("/usr/lib"), 16 * MiB)
    with open(disk, "r+b") as fh:
        fh.seek(1 << 30)
        fh.write(os.urandom(4 * MiB))
    out = []
    for compress, pipe, ext in (("0", "", "tar"), ("zstd", " | zstd -q -T1", "tar.zst")):

        def ours(compress: str = compress) -> tuple[float, float]:
            for f in dump.glob("*"):
                f.unlink()
            took = task(n.vzdump.post(vmid=vm, storage="local", compress=compress))
            (arch,) = dump.glob("vzdump-qemu-*")
            time.sleep(1.05)
            return arch.stat().st_size / MiB, took

        def tool(flags: str, pipe: str = pipe, ext: str = ext) -> tuple[float, float]:
            dst = work / f"sparse.{ext}"
            took = timed(lambda: sh(f"tar {flags} -cf - -C {disk.parent} {disk.name}{pipe} "
                                    f"> {dst}"))  # fmt: skip
            return dst.stat().st_size / MiB, took

        def median(fn: Any) -> tuple[float, float]:
            runs = [fn() for _ in range(rounds)]
            return runs[0][0], statistics.median(r[1] for r in runs)

        out.append((compress, [median(ours), median(lambda: tool("")),
                               median(lambda: tool("-S"))]))  # fmt: skip
    task(n.qemu(vm).delete())
    return out


if __name__ == "__main__":
    main()
