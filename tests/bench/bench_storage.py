"""Storage plugins vs the raw tools, side by side in one run (not collected by pytest).

    /opt/corral/venv/bin/python tests/bench/bench_storage.py [--count 100] [--rounds 10]
        [--backends dir,btrfs,rbd]

Per backend, each on a real storage the script makes itself (a temp dir, a
loop-mounted btrfs, a single-node Ceph on 127.0.0.1) and removes afterwards:

1. allocate + free `--count` 64 MiB disks through the plugin, against the raw
   tool doing the same (`qemu-img create` + rm, `btrfs subvolume create` +
   `delete`, `rbd create` + `rbd rm`); total seconds and ms per volume;
   (btrfs: a subvolume holding a raw file, as the plugin lays a raw disk out;
   the plugin also commits each delete so freed space shows at once);
2. snapshot create + delete, medians of `--rounds` (qcow2 internal snapshot,
   `btrfs subvolume snapshot -r`, `rbd snap create/rm`);
3. linked clone + free, medians of `--rounds` (qcow2 on a backing base,
   writable btrfs snapshot, `rbd clone` of a protected snapshot).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from corral.storage.ceph_cluster import CephCluster  # noqa: E402
from corral.storage.volumes import plugin_for_type  # noqa: E402
from tests.storage import loopfs  # noqa: E402
from tests.util import free_ports  # noqa: E402

MiB = 1 << 20
SIZE = 64 * MiB


def sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode(errors='replace').strip()}")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    """One backend: its config and the raw-tool equivalents of each operation."""

    def __init__(self, name: str, cfg: dict[str, Any], raw: dict[str, Callable[[int], None]],
                 snap_fmt: str, scratch: str) -> None:  # fmt: skip
        self.name, self.cfg, self.raw, self.snap_fmt = name, cfg, raw, snap_fmt
        self.plugin = plugin_for_type(cfg["type"])
        self.scratch = scratch

    def ours_alloc_free(self, count: int) -> float:
        p, cfg = self.plugin, self.cfg

        def run() -> None:
            names = [p.alloc(cfg, vmid=700, size=SIZE) for _ in range(count)]
            for n in names:
                p.free(cfg, volname=n)

        return timed(run)

    def ours_snapshot(self) -> float:
        p, cfg = self.plugin, self.cfg
        vol = p.alloc(cfg, vmid=701, size=SIZE, fmt=self.snap_fmt)
        try:
            return timed(lambda: (p.snapshot(cfg, volname=vol, snap="b"),
                                  p.snapshot_delete(cfg, volname=vol, snap="b")))  # fmt: skip
        finally:
            p.free(cfg, volname=vol)

    def ours_clone(self, base: str, snap: str | None) -> float:
        p, cfg = self.plugin, self.cfg

        def run() -> None:
            clone = p.clone_image(cfg, volname=base, vmid=703, snap=snap)
            p.free(cfg, volname=clone)

        return timed(run)

    def clone_source(self) -> tuple[str, str | None]:
        p, cfg = self.plugin, self.cfg
        vol = p.alloc(cfg, vmid=702, size=SIZE, fmt=self.snap_fmt)
        fmt = p.parse_volname(cfg, volname=vol).fmt
        if fmt in p.features["clone"].get("snap", frozenset()):
            p.snapshot(cfg, volname=vol, snap="c")
            return vol, "c"
        return p.create_base(cfg, volname=vol), None  # type: ignore[attr-defined]


def dir_raw(root: str) -> dict[str, Callable[[int], None]]:
    def alloc_free(count: int) -> None:
        paths = [os.path.join(root, f"raw-{i}.raw") for i in range(count)]
        for path in paths:
            sh("qemu-img", "create", "-q", "-f", "raw", path, str(SIZE))
        for path in paths:
            os.unlink(path)

    def snapshot(_i: int) -> None:
        img = os.path.join(root, "snap.qcow2")
        if not os.path.exists(img):
            sh("qemu-img", "create", "-q", "-f", "qcow2", img, str(SIZE))
        sh("qemu-img", "snapshot", "-c", "b", img)
        sh("qemu-img", "snapshot", "-d", "b", img)

    def clone(_i: int) -> None:
        base = os.path.join(root, "base.qcow2")
        if not os.path.exists(base):
            sh("qemu-img", "create", "-q", "-f", "qcow2", base, str(SIZE))
        child = os.path.join(root, "child.qcow2")
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", child)
        os.unlink(child)

    return {"alloc_free": alloc_free, "snapshot": snapshot, "clone": clone}


def btrfs_raw(root: str) -> dict[str, Callable[[int], None]]:
    def alloc_free(count: int) -> None:
        subs = [os.path.join(root, f"raw-{i}") for i in range(count)]
        for sub in subs:  # what the plugin does for one raw disk: a subvolume, a raw file
            sh("btrfs", "subvolume", "create", sub)
            sh("qemu-img", "create", "-q", "-f", "raw", os.path.join(sub, "disk.raw"), str(SIZE))
        for sub in subs:
            sh("btrfs", "subvolume", "delete", sub)

    def snapshot(_i: int) -> None:
        sub = os.path.join(root, "snapsrc")
        if not os.path.exists(sub):
            sh("btrfs", "subvolume", "create", sub)
        sh("btrfs", "subvolume", "snapshot", "-r", sub, sub + "@b")
        sh("btrfs", "subvolume", "delete", sub + "@b")

    def clone(_i: int) -> None:
        sub = os.path.join(root, "snapsrc")
        if not os.path.exists(sub):
            sh("btrfs", "subvolume", "create", sub)
        sh("btrfs", "subvolume", "snapshot", sub, sub + "-clone")
        sh("btrfs", "subvolume", "delete", sub + "-clone")

    return {"alloc_free": alloc_free, "snapshot": snapshot, "clone": clone}


def rbd_raw(ceph: CephCluster, pool: str) -> dict[str, Callable[[int], None]]:
    rbd = ["rbd", "--conf", ceph.conf_path, "-p", pool]

    def alloc_free(count: int) -> None:
        for i in range(count):
            sh(*rbd, "create", "--size", f"{SIZE // MiB}M", f"raw-{i}")
        for i in range(count):
            sh(*rbd, "rm", "--no-progress", f"raw-{i}")

    def snapshot(_i: int) -> None:
        sh(*rbd, "create", "--size", f"{SIZE // MiB}M", "rawsnap")
        try:
            t = time.perf_counter()
            sh(*rbd, "snap", "create", "rawsnap@b")
            sh(*rbd, "snap", "rm", "--no-progress", "rawsnap@b")
            snapshot.spent += time.perf_counter() - t  # type: ignore[attr-defined]
        finally:
            sh(*rbd, "rm", "--no-progress", "rawsnap")

    def clone(_i: int) -> None:
        sh(*rbd, "clone", f"{pool}/rawbase@c", f"{pool}/rawchild")
        sh(*rbd, "rm", "--no-progress", "rawchild")

    snapshot.spent = 0.0  # type: ignore[attr-defined]
    return {"alloc_free": alloc_free, "snapshot": snapshot, "clone": clone,
            "setup": lambda _i: (sh(*rbd, "create", "--size", "64M", "rawbase"),
                                 sh(*rbd, "snap", "create", "rawbase@c"),
                                 sh(*rbd, "snap", "protect", "rawbase@c"))}  # fmt: skip


@contextlib.contextmanager
def backends(names: list[str], base: str) -> Iterator[list[Bench]]:
    with contextlib.ExitStack() as stack:
        out = []
        if "dir" in names:
            root = os.path.join(base, "dir")
            raw = os.path.join(base, "dir-raw")
            os.makedirs(raw)
            out.append(Bench("dir", {"type": "dir", "path": root}, dir_raw(raw), "qcow2", raw))
        if "btrfs" in names:
            mnt = stack.enter_context(loopfs.loop_fs(
                os.path.join(base, "btrfs.img"), os.path.join(base, "btrfs"),
                size=2048 * MiB, mkfs=["mkfs.btrfs", "-q", "-f"]))  # fmt: skip
            raw = os.path.join(mnt, "raw")
            os.makedirs(raw)
            cfg = {"type": "btrfs", "path": os.path.join(mnt, "store")}
            out.append(Bench("btrfs", cfg, btrfs_raw(raw), "raw", raw))
        if "rbd" in names:
            port = free_ports(3)
            ceph = CephCluster(os.path.join(base, "ceph"), mon_port=port, mon_v1_port=port + 1,
                               osd_ports=(port + 2, port + 42))  # fmt: skip
            os.makedirs(ceph.dir)
            stack.callback(ceph.stop)
            t0 = time.perf_counter()
            ceph.start(timeout=180)
            ceph.create_pool("crlstbench")
            print(f"(single-node Ceph up with its pool in {time.perf_counter() - t0:.1f} s)")
            cfg = {"type": "rbd", "pool": "crlstbench", "conf": ceph.conf_path,
                   "monhost": ceph.monhost, "username": "admin",
                   "keyring": ceph.keyring_path}  # fmt: skip
            bench = Bench("rbd", cfg, rbd_raw(ceph, "crlstbench"), "raw", "")
            stack.callback(bench.plugin.deactivate, cfg)
            out.append(bench)
        for b in out:
            b.plugin.activate(b.cfg)
        yield out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--backends", default="dir,btrfs,rbd")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="crlst-bench-", dir="/var/tmp")
    med = statistics.median
    rows = []
    try:
        with backends(args.backends.split(","), base) as benches:
            for b in benches:
                ours = b.ours_alloc_free(args.count)
                raw = timed(lambda b=b: b.raw["alloc_free"](args.count))
                rows.append((b.name, f"alloc+free x{args.count}", ours, raw, args.count))
                ours_s = med(b.ours_snapshot() for _ in range(args.rounds))
                if b.name == "rbd":  # create/rm of the image itself is not the snapshot
                    for i in range(args.rounds):
                        b.raw["snapshot"](i)
                    raw_s = b.raw["snapshot"].spent / args.rounds  # type: ignore[attr-defined]
                else:
                    raw_s = med(timed(lambda b=b, i=i: b.raw["snapshot"](i))
                                for i in range(args.rounds))  # fmt: skip
                rows.append((b.name, "snapshot create+delete", ours_s, raw_s, 1))
                src, snap = b.clone_source()
                ours_c = med(b.ours_clone(src, snap) for _ in range(args.rounds))
                if "setup" in b.raw:
                    b.raw["setup"](0)
                raw_c = med(timed(lambda b=b, i=i: b.raw["clone"](i)) for i in range(args.rounds))
                rows.append((b.name, "linked clone+free", ours_c, raw_c, 1))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'backend':<8}{'operation':<26}{'corral':>12}{'raw tool':>12}{'per volume':>22}")
    for name, op, ours, raw, n in rows:
        per = f"{ours / n * 1000:7.1f} / {raw / n * 1000:7.1f} ms" if n > 1 else ""
        print(f"{name:<8}{op:<26}{ours * 1000:9.1f} ms{raw * 1000:9.1f} ms{per:>22}")
    print("(alloc+free: totals; snapshot and clone: medians of", args.rounds, "rounds)")


if __name__ == "__main__":
    main()
