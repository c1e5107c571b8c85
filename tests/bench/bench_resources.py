"""Benchmark: /cluster/resources and a node's guest list at datacenter scale, beside
the raw etcd read.

    /opt/corral/venv/bin/python tests/bench/bench_resources.py [--nodes 100] [--guests 10000]

Writes synthetic node, guest and live-status records (the shapes corrald
writes) into a fresh node's etcd, then times the whole-cluster view as an
administrator would fetch it (token, not root), and `etcdctl get --prefix`
of the same keys for comparison.

`--churn S` (default 20) then measures what the cluster's live figures cost a
node's view: S seconds idle, then S seconds while a writer refreshes every
guest's `gueststatus/{node}/{vmid}` once per REFRESH (30 s) as 100 nodes' 2 s
rounds do, each node's share in one transaction. It reports the watching
corrald's CPU in both windows (after its first history round, which makes
every guest's RRD file) and /cluster/resources under the churn.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
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


ROUND = 2.0  # a node's status round, s (guest_status)
REFRESH = 30.0  # each guest's key is rewritten once a REFRESH (guest_status)


def churn(store: Store, nodes: int, guests: int, stop: threading.Event) -> int:
    """Rewrite each guest's live key once per REFRESH, as every node's round does:
    each node writes its due guests in one transaction every ROUND, the nodes'
    rounds spread over the ROUND. Returns the keys written."""
    per_node = max(1, guests // nodes)
    per_round = max(1, round(per_node * ROUND / REFRESH))
    gap = ROUND / nodes
    written, tick = 0, 0
    next_at = time.monotonic()
    while not stop.is_set():
        n = tick % nodes
        name, first = f"bench{n:03d}", 1000 + n * per_node
        start = (tick // nodes * per_round) % per_node
        ops: list[tuple[object, ...]] = []
        for i in range(per_round):
            vmid = first + (start + i) % per_node
            entry = {
                "status": "running",
                "cpu": 0.02 + (tick % 7) / 1000,
                "mem": 1 << 28,
                "maxmem": 1 << 30,
                "uptime": 500 + tick,
                "netin": tick,
                "netout": tick,
            }
            ops.append(("put", keys.guest_status(name, vmid), entry))
        store.txn([], ops)
        written += len(ops)
        tick += 1
        next_at += gap
        time.sleep(max(0.0, next_at - time.monotonic()))
    return written


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _etcd_of(pid: int) -> int | None:
    """The embedded etcd: corrald's child process named etcd."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        comm, rest = text.split("(", 1)[1].rsplit(")", 1)
        if comm == "etcd" and int(rest.split()[1]) == pid:
            return int(entry)
    return None


def _history_made(node: Corrald, guests: int, timeout: float = 300) -> None:
    """Wait for the node's first history round to have made every guest's file: that
    one-off (10,000 rrdtool creates) would otherwise land in the idle window."""
    folder = node.data_dir / "rrd" / "pve2-vm"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir() and sum(1 for _ in folder.glob("*.rrd")) >= guests:
            time.sleep(2)  # its last files, and the round's end
            return
        time.sleep(1)
    print("  (the first history round did not finish: the idle figure includes it)")


def churn_phase(node: Corrald, store: Store, s: ApiSession, args: argparse.Namespace) -> None:
    assert node.proc is not None
    pid = node.proc.pid
    _history_made(node, args.guests)
    etcd = _etcd_of(pid) or pid
    c0, e0, t0 = _cpu_seconds(pid), _cpu_seconds(etcd), time.monotonic()
    time.sleep(args.churn)
    idle = (_cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
    etcd_idle = (_cpu_seconds(etcd) - e0) / (time.monotonic() - t0) * 100
    stop = threading.Event()
    out: list[int] = []
    writer = threading.Thread(
        target=lambda: out.append(churn(store, args.nodes, args.guests, stop))
    )
    c0, e0, t0 = _cpu_seconds(pid), _cpu_seconds(etcd), time.monotonic()
    writer.start()
    times = []
    deadline = t0 + args.churn
    while time.monotonic() < deadline:
        t = time.perf_counter()
        assert s.get("/cluster/resources").status_code == 200
        times.append(time.perf_counter() - t)
        time.sleep(1.0)
    stop.set()
    writer.join()
    elapsed = time.monotonic() - t0
    busy = (_cpu_seconds(pid) - c0) / elapsed * 100
    etcd_busy = (_cpu_seconds(etcd) - e0) / elapsed * 100
    times.sort()
    print(f"live-figure churn: {out[0] / elapsed:.0f} gueststatus keys/s in "
          f"{args.nodes / ROUND:.0f} transactions/s")  # fmt: skip
    print(f"  corrald CPU: {idle:.1f} % of a core idle, {busy:.1f} % under the churn")
    print(f"  its etcd's CPU: {etcd_idle:.1f} % idle, {etcd_busy:.1f} % under the churn "
          "(the writer's load included)")  # fmt: skip
    print(f"  GET /cluster/resources under the churn: median "
          f"{statistics.median(times) * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms "
          f"({len(times)} reads, one a second)")  # fmt: skip
    # No raw tool does this: the idle figure goes beside it, not into a ratio.
    record("resources", f"corrald CPU, its view under {args.guests} guests' live-key churn",
           ours=busy, raw=None, unit="% of a core", idle=round(idle, 2),
           etcd_idle=round(etcd_idle, 2), etcd_churn=round(etcd_busy, 2))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--guests", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--churn", type=float, default=20.0, help="s per churn window (0: none)")
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
            # One node's guest list, as proxmoxer, Ansible and Terraform ask for it: etcd
            # has no per-node index, so served from etcd it cost the read above.
            one = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                r = s.get("/nodes/bench000/lxc")
                one.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            one.sort()
            p95 = one[int(len(one) * 0.95)] * 1000
            print(f"GET /nodes/bench000/lxc: {len(r.json()['data'])} rows, median "
                  f"{statistics.median(one) * 1000:.1f} ms, p95 {p95:.1f} ms")  # fmt: skip
            what = f"/nodes/N/lxc p95, one node of {args.nodes} / {args.guests} guests"
            record("resources", what, ours=p95, raw=statistics.median(raw) * 1000, unit="ms",
                   median=statistics.median(one) * 1000,
                   raw_tool="etcdctl get --prefix guests/")  # fmt: skip
            if args.churn > 0:
                churn_phase(node, store, s, args)
            store.close()
        finally:
            node.stop()


if __name__ == "__main__":
    main()
