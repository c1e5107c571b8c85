"""Benchmark: API requests/s and latency, and raw store ops/s, side by side with etcdctl.

    /opt/corral/venv/bin/python tests/bench/bench_api.py [--seconds 5] [--clients 4]

Starts its own corrald (private etcd) on free loopback ports and stops it.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.cluster.store import Store  # noqa: E402
from tests.util import Corrald  # noqa: E402


def hammer(session_factory, path: str, seconds: float, clients: int) -> tuple[float, float, float]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run() -> None:
        s = session_factory()
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            r = s.get(path)
            assert r.status_code == 200, r.text
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    latencies.sort()
    return (
        len(latencies) / elapsed,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.95)] * 1000,
    )


def store_ops(endpoint: str, n: int) -> tuple[float, float]:
    store = Store([endpoint], prefix=f"/bench/{uuid.uuid4().hex}/")
    t = time.perf_counter()
    for i in range(n):
        store.put(f"k/{i}", {"i": i})
    put_rate = n / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        store.get(f"k/{i}")
    get_rate = n / (time.perf_counter() - t)
    store.delete_prefix("")
    store.close()
    return put_rate, get_rate


def etcdctl_ops(endpoint: str, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        subprocess.run(
            ["etcdctl", "--endpoints", endpoint, "put", f"/bench-raw/{i}", "x"],
            check=True,
            capture_output=True,
            timeout=10,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--ops", type=int, default=2000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = Corrald(Path(tmp) / "n").start()
        try:
            token = node.local().call(
                "POST", "/access/users/admin@pve/token/bench", {"privsep": 0}
            )["value"]
            from tests.util import ApiSession

            def factory() -> ApiSession:
                return ApiSession(node.url, node.ca).token(f"admin@pve!bench={token}")

            print(f"{'what':<34} {'req/s':>8} {'median ms':>10} {'p95 ms':>8}")
            for path in ("/version", "/cluster/resources"):
                for clients in (1, args.clients):
                    rate, med, p95 = hammer(factory, path, args.seconds, clients)
                    print(f"GET {path:<20} x{clients:<8} {rate:8.0f} {med:10.2f} {p95:8.2f}")
            endpoint = f"http://127.0.0.1:{node.etcd_port}"
            put_rate, get_rate = store_ops(endpoint, args.ops)
            raw = etcdctl_ops(endpoint, 50)
            print(f"store put (corral.cluster.store)      {put_rate:8.0f} ops/s")
            print(f"store get (corral.cluster.store)      {get_rate:8.0f} ops/s")
            print(f"etcdctl put (one process per op)      {raw:8.0f} ops/s")
        finally:
            node.stop()


if __name__ == "__main__":
    main()
