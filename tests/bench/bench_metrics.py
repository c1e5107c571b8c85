"""Benchmark: a Prometheus scrape and the history round at datacenter scale.

    /opt/corral/venv/bin/python tests/bench/bench_metrics.py [--nodes 100] [--guests 10000]

Fills a fresh node's etcd with synthetic nodes, guests and live status (the
shapes corrald writes, as bench_resources.py does), then times in one run:
`GET /cluster/resources` (the same rows), `GET /metrics` (whole cluster) and
`GET /metrics?cluster=0`, all with an API token; and one history round
(corral.cluster.metrics_rrd.record_round: an rrdtool update per node, guest
and storage) beside librrd's own update (rrdtool.update) looped over the same files.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.cluster import metrics_rrd  # noqa: E402
from corral.cluster.store import Store  # noqa: E402
from tests.bench.bench_resources import populate  # noqa: E402
from tests.util import ApiSession, Corrald  # noqa: E402


def timed(session: ApiSession, url: str, rounds: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(rounds):
        t = time.perf_counter()
        r = session.http.get(url, verify=session.ca, timeout=120)
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text[:300]
        size = len(r.content)
    return sorted(times), size


def show(label: str, times: list[float], size: int) -> None:
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    print(
        f"{label}: {size / 1e6:.1f} MB, median {statistics.median(times) * 1000:.0f} ms, "
        f"p95 {p95 * 1000:.0f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--guests", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        node = Corrald(Path(tmp) / "n").start()
        try:
            endpoint = f"http://127.0.0.1:{node.etcd_port}"
            store = Store([endpoint], timeout=30)
            t = time.perf_counter()
            populate(store, args.nodes, args.guests)
            print(f"populated {args.nodes} nodes, {args.guests} guests in "
                  f"{time.perf_counter() - t:.1f} s")  # fmt: skip
            token = node.local().call(
                "POST", "/access/users/admin@pve/token/bench", {"privsep": 0}
            )["value"]
            s = ApiSession(node.url, node.ca).token(f"admin@pve!bench={token}")
            base = node.url
            show("GET /cluster/resources", *timed(s, f"{base}/api2/json/cluster/resources",
                                                  args.rounds))  # fmt: skip
            times, size = timed(s, f"{base}/metrics", args.rounds)
            show("GET /metrics (whole cluster)", times, size)
            show("GET /metrics?cluster=0 (one node)",
                 *timed(s, f"{base}/metrics?cluster=0", args.rounds))  # fmt: skip

            rrd = metrics_rrd.RrdStore(Path(tmp) / "rrd")
            first = time.perf_counter()
            count = metrics_rrd.record_round(rrd, store, now=time.time() - 60)
            first = time.perf_counter() - first
            t = time.perf_counter()
            metrics_rrd.record_round(rrd, store, now=time.time())
            again = time.perf_counter() - t
            print(f"history round: {count} files, first (creates) {first:.2f} s, "
                  f"next (updates) {again:.2f} s")  # fmt: skip
            # The raw tool on the same files: librrd's update, called in a loop.
            import rrdtool

            files = sorted(str(f) for f in (Path(tmp) / "rrd" / "pve2-vm").glob("*.rrd"))
            ts = int(time.time()) + 5
            t = time.perf_counter()
            for f in files:
                rrdtool.update(f, f"{ts}:2:0.1:1:1:1:1:1:1:1:1")
            print(f"raw rrdtool.update of {len(files)} files: {time.perf_counter() - t:.2f} s")
            store.close()
        finally:
            node.stop()


if __name__ == "__main__":
    main()
