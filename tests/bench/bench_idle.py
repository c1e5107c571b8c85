"""Idle cost per guest: corrald's CPU and RSS, host memory per CT and API
latency with N idle busybox containers on one node (not collected by pytest).

    /opt/corral/venv/bin/python tests/bench/bench_idle.py [--counts 10 100 300] [--idle 20]
                                                          [--before REV] [--json out.json]

One corrald (own etcd). For each count in turn, containers are created and
started through the API (8 tasks at a time, as the node runs them) until that
many run, then, after they settle, `--idle` seconds of doing nothing are
measured: CPU of corrald and of its etcd (from /proc/PID/stat), corrald's RSS,
the host's MemAvailable drop per container since none ran, and the medians and
p95 of `GET /cluster/resources` and `GET .../status/current` (20 each). The
raw reference for memory is LXC's own processes (monitor + init) per container.
The issue's goal: 1,000 idle CTs cost no more than 10 (corrald's idle CPU flat).
Also read from corrald's /metrics over the window: the mean time of one status
round and how many rounds wrote the node's status document.

`--before REV` measures each count twice on the same running containers: with
this checkout's corrald, then restarted on the code of git revision REV (put
first on PYTHONPATH; the containers outlive the restart), then back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from corral.lxc import templates  # noqa: E402
from tests.bench.bench_lxc import _mem_available, _monitor_pids, _rss, _wait_tasks  # noqa: E402
from tests.bench.results import record  # noqa: E402
from tests.lxc.helpers import cleanup_lxcpath  # noqa: E402
from tests.util import ApiSession, Corrald  # noqa: E402

NODE = "crlbench"  # bench_lxc._wait_tasks asks this node
FIRST = 90000


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _latency(api: ApiSession, path: str, n: int = 20) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        api.data("GET", path)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


def _grow(api: ApiSession, tid: str, have: int, want: int) -> None:
    params = {"ostemplate": tid, "rootfs": "local:1", "memory": 64, "swap": 0, "start": 1}
    for lo in range(have, want, 50):  # batches keep the task queue short
        vmids = range(FIRST + lo, FIRST + min(want, lo + 50))
        upids = [api.data("POST", f"/nodes/{NODE}/lxc", data={**params, "vmid": v}) for v in vmids]
        _wait_tasks(api, upids, timeout=1800)


def _round_metrics(api: ApiSession) -> dict[str, float]:
    """corrald's status-round figures from /metrics ({} where it has none)."""
    r = api.http.get(f"{api.base}/metrics", verify=api.ca, timeout=60)
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        for name in ("corral_status_round_duration_seconds_sum",
                     "corral_status_round_duration_seconds_count"):  # fmt: skip
            if line.startswith(name + " "):
                out[name.rsplit("_", 1)[1]] = float(line.split()[1])
        if line.startswith('corral_status_rounds_total{result="written"}'):
            out["written"] = float(line.split()[1])
    return out


def measure(node: Corrald, api: ApiSession, count: int, idle: float, mem0: int) -> dict[str, Any]:
    pid = int((node.data_dir / "corrald.pid").read_text())
    etcd = node.etcd_pid()
    time.sleep(5 + count / 100)  # the start tasks' follow-ups, the inits, a first round settle
    m0 = _round_metrics(api)
    c0, e0, t0 = _cpu_seconds(pid), _cpu_seconds(etcd) if etcd else 0.0, time.monotonic()
    time.sleep(idle)
    wall = time.monotonic() - t0
    m1 = _round_metrics(api)
    cpu = (_cpu_seconds(pid) - c0) / wall * 100
    etcd_cpu = ((_cpu_seconds(etcd) - e0) / wall * 100) if etcd else float("nan")
    lxcpath = str(node.data_dir / "lxc")
    monitors = _monitor_pids(lxcpath)
    res = _latency(api, "/cluster/resources")
    rows = api.data("GET", "/cluster/resources", params={"type": "vm"})
    mems = [r.get("mem", 0) for r in rows if r["vmid"] >= FIRST and r["status"] == "running"]
    cur = _latency(api, f"/nodes/{NODE}/lxc/{FIRST}/status/current")
    rounds = m1.get("count", 0) - m0.get("count", 0)
    return {
        "containers": count,
        "load_avg_1m": os.getloadavg()[0],
        "status_round_ms": round((m1["sum"] - m0["sum"]) / rounds * 1000, 2) if rounds else None,
        "status_rounds_written": f"{m1.get('written', 0) - m0.get('written', 0):.0f}/{rounds:.0f}",
        "corrald_cpu_percent": round(cpu, 2),
        "etcd_cpu_percent": round(etcd_cpu, 2),
        "corrald_rss_mib": round(_rss(pid) / 2**20, 1),
        "running": len(mems),
        # MemAvailable moves with everything else the host runs: noisy when shared.
        "host_mem_per_ct_kib": round((mem0 - _mem_available()) / count / 1024),
        "ct_cgroup_mem_kib": round(statistics.median(mems) / 1024) if mems else 0,
        "lxc_monitor_rss_per_ct_kib": round(sum(_rss(p) for p in monitors) / count / 1024),
        "resources_ms": {"median": round(res[0], 1), "p95": round(res[1], 1)},
        "status_current_ms": {"median": round(cur[0], 1), "p95": round(cur[1], 1)},
    }


def _before_code(rev: str, base: str) -> str:
    """A PYTHONPATH entry whose corral.* packages are revision `rev` of this repo."""
    root = Path(__file__).resolve().parents[2]
    src, shim = Path(base) / "before" / "src", Path(base) / "before" / "shim"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(root), "archive", rev], check=True,
                             capture_output=True, timeout=120).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True, timeout=120)
    (shim / "corral").mkdir(parents=True)
    for pkg in ("cluster", "kvm", "lxc", "storage", "web"):
        (shim / "corral" / pkg).symlink_to(src / pkg)
    return str(shim)


def _restart(node: Corrald, pythonpath: str | None) -> ApiSession:
    """corrald again on the same data (the containers keep running), on other code."""
    node.stop()
    saved = os.environ.pop("PYTHONPATH", None)
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        node.start()
    finally:
        os.environ.pop("PYTHONPATH", None)
        if saved is not None:
            os.environ["PYTHONPATH"] = saved
    return node.session()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", type=int, nargs="*", default=[10, 100])
    ap.add_argument("--idle", type=float, default=20.0, help="seconds measured at each count")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--before", help="git revision to measure beside this checkout")
    args = ap.parse_args()
    # Stopped (report.py's timeout, kill): still remove every container below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = tempfile.mkdtemp(prefix="crl-idle-", dir="/var/tmp")
    os.chmod(base, 0o755)
    node = Corrald(Path(base) / "corrald", node=NODE).start()
    rows: list[dict[str, Any]] = []
    have = 0
    try:
        template = templates.build_busybox(os.path.join(base, "cache"), log=lambda _m: None)
        shutil.copy(template, node.data_dir / "local/template/cache" / os.path.basename(template))
        tid = f"local:vztmpl/{os.path.basename(template)}"
        api = node.session()
        before = _before_code(args.before, base) if args.before else None
        mem0 = _mem_available()
        print("CTs  corrald CPU  etcd CPU  corrald RSS  host mem/CT  CT cgroup  LXC own/CT"
              "  resources med/p95  status/current med/p95"
              "  round  written  running  load  code")  # fmt: skip
        for count in sorted(args.counts):
            _grow(api, tid, have, count)
            have = count
            row = measure(node, api, count, args.idle, mem0)
            if before:
                api = _restart(node, before)
                row["before"] = measure(node, api, count, args.idle, mem0)
                api = _restart(node, None)
            rows.append(row)
            figures = {k: v for k, v in row.items() if k != "containers"}
            record("idle", f"corrald CPU, {count} idle CTs", ours=row["corrald_cpu_percent"],
                   raw=None, unit="% of a core", **figures)  # fmt: skip
            for label, r in (("now", row), (f"{args.before}", row.get("before"))):
                if r is None:
                    continue
                res, cur = r["resources_ms"], r["status_current_ms"]
                print(f"{count:4d} {r['corrald_cpu_percent']:9.1f} % {r['etcd_cpu_percent']:7.1f} %"
                      f" {r['corrald_rss_mib']:8.0f} MiB {r['host_mem_per_ct_kib']:8d} KiB"
                      f" {r['ct_cgroup_mem_kib']:6d} KiB"
                      f" {r['lxc_monitor_rss_per_ct_kib']:7d} KiB"
                      f" {res['median']:8.1f}/{res['p95']:.1f} ms"
                      f" {cur['median']:10.1f}/{cur['p95']:.1f} ms"
                      f"  {r['status_round_ms'] or '-'} ms {r['status_rounds_written']:>6}"
                      f"  {r['running']:4d} {r['load_avg_1m']:5.1f}  {label}",
                      flush=True)  # fmt: skip
        if args.json:
            Path(args.json).write_text(json.dumps({"node_idle": rows}, indent=1) + "\n")
    finally:
        node.stop()
        cleanup_lxcpath(str(node.data_dir / "lxc"))
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
