"""Benchmark: /cluster/resources at datacenter scale, beside the raw etcd read.

    /opt/corral/venv/bin/python tests/bench/bench_resources.py [--nodes 100] [--guests 10000]

Writes synthetic node, guest and live-status records (the shapes corrald
writes) into a fresh node's etcd, then times the whole-cluster view as an
administrator would fetch it (token, not root), and `etcdctl get --prefix`
of the same keys for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.cluster import keys  # noqa: E402
from corral.cluster.store import Store  # noqa: E402
from tests.bench.results import record  # noqa: E402
from tests.util import ApiSession, Corrald  # noqa: E402


def populate(store: Store, nodes: int, guests: int) -> None:
    per_node = max(1, guests // nodes)
    vmid = 1000
    for n in range(nodes):
        name = f"bench{n:03d}"
        store.put(keys.node_info(name), {"node": name, "nodeid": n + 10, "address": "192.0.2.1"})
        store.put(keys.node_alive(name), {"since": 0})
        store.put(
            keys.node_status(name),
            {"cpu": 0.1, "maxcpu": 64, "mem": 1 << 34, "maxmem": 1 << 38, "uptime": 1000},
        )
        doc = {}
        ops: list[tuple[object, ...]] = []
        for _ in range(per_node):
            kind = "lxc" if vmid % 2 else "qemu"
            if len(ops) == 100:  # etcd takes at most 128 operations per transaction
                store.txn([], ops)
                ops = []
            ops.append(
                (
                    "put",
                    keys.guest(vmid),
                    {
                        "vmid": vmid,
                        "type": kind,
                        "node": name,
                        "pending": {},
                        "lock": None,
                        "config": {
                            "hostname" if kind == "lxc" else "name": f"g{vmid}",
                            "memory": 1024,
                            "cores": 2,
                            "net0": "name=eth0,bridge=vmbr0",
                        },
                    },
                )
            )
            doc[str(vmid)] = {
                "status": "running",
                "cpu": 0.02,
                "mem": 1 << 28,
                "maxmem": 1 << 30,
                "uptime": 500,
                "netin": 1,
                "netout": 2,
            }
            vmid += 1
        store.txn([], ops)
        items = [("put", keys.guest_status(name, v), e) for v, e in doc.items()]
        for i in range(0, len(items), 100):  # etcd takes up to 128 operations a transaction
            store.txn([], items[i : i + 100])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--guests", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = Corrald(Path(tmp) / "n").start()
        try:
            endpoint = f"http://127.0.0.1:{node.etcd_port}"
            store = Store([endpoint], timeout=30)
            t = time.perf_counter()
            populate(store, args.nodes, args.guests)
            print(
                f"populated {args.nodes} nodes, {args.guests} guests in "
                f"{time.perf_counter() - t:.1f} s"
            )
            token = node.local().call(
                "POST", "/access/users/admin@pve/token/bench", {"privsep": 0}
            )["value"]
            s = ApiSession(node.url, node.ca).token(f"admin@pve!bench={token}")
            t = time.perf_counter()
            assert s.get("/cluster/resources").status_code == 200
            print(f"first GET /cluster/resources (the node's view loads): "
                  f"{(time.perf_counter() - t) * 1000:.0f} ms")  # fmt: skip
            for path in ("/nodes", "/cluster/status"):
                small = []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    assert s.get(path).status_code == 200
                    small.append(time.perf_counter() - t)
                small.sort()
                print(f"GET {path}: median {statistics.median(small) * 1000:.1f} ms, p95 "
                      f"{small[int(len(small) * 0.95)] * 1000:.1f} ms")  # fmt: skip
            times, size = [], 0
            for _ in range(args.rounds):
                t = time.perf_counter()
                r = s.get("/cluster/resources")
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                size = len(r.content)
            rows = len(r.json()["data"])
            raw = []
            for _ in range(5):
                t = time.perf_counter()
                subprocess.run(
                    [
                        "etcdctl",
                        "--endpoints",
                        endpoint,
                        "get",
                        "--prefix",
                        "/corral/v1/guests/",
                        "-w",
                        "json",
                    ],
                    check=True,
                    capture_output=True,
                    timeout=60,
                    env={"ETCDCTL_API": "3"},
                )
                raw.append(time.perf_counter() - t)
            times.sort()
            print(
                f"GET /cluster/resources: {rows} rows, {size / 1e6:.1f} MB, median "
                f"{statistics.median(times) * 1000:.0f} ms, p95 "
                f"{times[int(len(times) * 0.95)] * 1000:.0f} ms"
            )
            print(
                f"etcdctl get --prefix guests/ (raw read only): median "
                f"{statistics.median(raw) * 1000:.0f} ms"
            )
            p95 = times[int(len(times) * 0.95)] * 1000
            what = f"/cluster/resources p95, {args.nodes} nodes / {args.guests} guests"
            record("resources", what, ours=p95, raw=statistics.median(raw) * 1000, unit="ms",
                   median=statistics.median(times) * 1000, goal=100,
                   raw_tool="etcdctl get --prefix guests/")  # fmt: skip
            store.close()
        finally:
            node.stop()


if __name__ == "__main__":
    main()
