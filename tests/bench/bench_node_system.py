"""Benchmark: a node's services, network and log through the API, beside the raw tools
that answer the same questions on the host (`ps -e`, `ip -j addr`, `tail -n 50` of the
daemon's log file).

    /opt/corral/venv/bin/python tests/bench/bench_node_system.py [--rounds 50]

Starts its own corrald (private etcd) on free loopback ports; stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.util import Corrald  # noqa: E402


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def figures(name: str, samples: list[float]) -> None:
    samples.sort()
    p50 = statistics.median(samples) * 1000
    p95 = samples[max(0, int(len(samples) * 0.95) - 1)] * 1000
    print(f"{name:<44} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   ({len(samples)} rounds)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="crlbns") as base:
        node = Corrald(Path(base) / "node")
        node.start()
        try:
            api = node.session()
            log = str(node.data_dir / "log" / "corrald.log")

            def run(argv: list[str]) -> Callable[[], object]:
                return lambda: subprocess.run(argv, capture_output=True, check=True, timeout=30)

            pairs = [
                ("GET /nodes/node1/services", lambda: api.data("GET", "/nodes/node1/services"),
                 "raw: ps -e -o pid,comm", run(["ps", "-e", "-o", "pid,comm"])),
                ("GET /nodes/node1/network", lambda: api.data("GET", "/nodes/node1/network"),
                 "raw: ip -j addr", run(["ip", "-j", "addr"])),
                ("GET /nodes/node1/syslog (last 50)",
                 lambda: api.data("GET", "/nodes/node1/syslog", params={"limit": 50}),
                 "raw: tail -n 50 corrald.log", run(["tail", "-n", "50", log])),
            ]  # fmt: skip
            for name, ours, raw_name, raw in pairs:
                figures(name, timed(ours, args.rounds))
                figures(raw_name, timed(raw, args.rounds))
        finally:
            node.stop()


if __name__ == "__main__":
    main()
