"""Benchmark: parallel automation, GET /cluster/nextid then create, beside raw extraction.

    /opt/corral/venv/bin/python tests/bench/bench_parallel_create.py [--clients 10 --creates 3]

Starts its own corrald, builds the busybox template, then runs N proxmoxer
clients at once, each asking for the next ID and creating a container with
it (what Ansible's proxmox modules do); reports errors, wall time and
creates/s. The raw reference is `tar -xzf` of the same template into a
directory, one per create, in sequence: the work a create cannot avoid.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.results import record  # noqa: E402
from tests.lxc.helpers import cleanup_lxcpath  # noqa: E402
from tests.lxc.test_api import corral  # noqa: E402
from tests.lxc.test_parallel_create import destroy_all, run_clients  # noqa: E402
from tests.util import Corrald  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="*", default=[10, 50])
    ap.add_argument("--creates", type=int, default=3, help="per client (the 10-client run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = Corrald(Path(tmp) / "n").start()
        try:
            out = corral(node, "corral", "--data-dir", str(node.data_dir), "template", "build",
                         "busybox")  # fmt: skip
            template = out.stdout.strip()
            tarball = node.data_dir / "local/template/cache" / template.rsplit("/", 1)[1]
            for clients in args.clients:
                creates = args.creates if clients <= 10 else 1
                t = time.perf_counter()
                result = run_clients(node, template, clients, creates)
                wall = time.perf_counter() - t
                n = clients * creates
                print(
                    f"{clients} clients x {creates} (GET nextid + create + wait): "
                    f"{len(result['errors'])} errors of {n}, {wall:.1f} s, {n / wall:.1f} creates/s"
                )
                for err in result["errors"][:3]:
                    print(f"  error: {err}")
                destroy_all(node, result["vmids"])
                raw = Path(tmp) / "raw"
                t = time.perf_counter()
                for i in range(n):
                    target = raw / str(i)
                    target.mkdir(parents=True)
                    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(target)],
                                   check=True, timeout=60)  # fmt: skip
                raw_wall = time.perf_counter() - t
                subprocess.run(["rm", "-rf", str(raw)], check=True, timeout=60)
                print(f"  raw: {n} x tar -xzf of the template in sequence: {raw_wall:.1f} s")
                record("parallel_create", f"{clients} clients x {creates} creates (wall)",
                       ours=wall, raw=raw_wall, unit="s", errors=len(result["errors"]),
                       raw_tool="tar -xzf x N in sequence")  # fmt: skip
        finally:
            node.stop()
            cleanup_lxcpath(str(node.data_dir / "lxc"))


if __name__ == "__main__":
    main()
