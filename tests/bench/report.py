"""One benchmark report: every benchmark beside its raw tool, as JSON and PNG plots.

    /opt/corral/venv/bin/python tests/bench/report.py [--only lxc idle ...] [--out docs/bench]

Runs the benchmarks below one after the other (each starts and stops its own
corrald and etcd), keeps what each printed in OUT/NAME.txt, and writes
OUT/report.json (every figure: ours, the raw tool's in the same run, the
ratio) and the plots OUT/ratios.png (corral / raw tool per measure, with the
previous report's ratios beside them when OUT/report.json existed) and
OUT/idle.png (corrald's idle CPU and RSS against the number of CTs). A later
run with the same command overwrites them; `git diff docs/bench/report.json`
compares two runs. Needs Debian's python3-matplotlib (install.sh --test-deps).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# name -> (script, arguments, timeout in s): sized to finish in minutes on 2 cores.
BENCHES: dict[str, tuple[str, list[str], int]] = {
    "lxc": ("bench_lxc.py", ["--rounds", "20"], 900),
    "resources": ("bench_resources.py", ["--nodes", "100", "--guests", "10000"], 900),
    # Issue 16's two goals: 0 errors for 10 clients (3 creates each) and for 50.
    "parallel_create": (
        "bench_parallel_create.py",
        ["--clients", "10", "50", "--creates", "3"],
        900,
    ),
    "kvm": ("bench_kvm.py", ["--rounds", "3"], 900),
    "kvm_status": ("bench_kvm_status.py", ["--vms", "20"], 600),
    "etcd": ("bench_etcd.py", ["--rounds", "300"], 600),
    # 1,000 CTs is issue 16's headline; 71e553c is the code before the status round
    # was batched and made change-driven, measured on the same containers.
    "idle": (
        "bench_idle.py",
        ["--counts", "10", "100", "300", "1000", "--idle", "15", "--before", "71e553c"],
        3600,
    ),
}


def run(names: list[str], out: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for name in names:
        script, argv, timeout = BENCHES[name]
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as tmp:
            sink = tmp.name
        env = {**os.environ, "CORRAL_BENCH_JSON": sink}
        print(f"==> {name}: {script} {' '.join(argv)}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, str(HERE / script), *argv], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        try:
            text, errors = proc.communicate(timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            # SIGTERM first: the benchmark then removes what it made (1,000 containers).
            proc.terminate()
            try:
                text, errors = proc.communicate(timeout=300)
            except subprocess.TimeoutExpired:
                proc.kill()
                text, errors = proc.communicate()
            text, code = f"{text or ''}\ntimed out after {timeout} s", -1
        if code != 0:
            # What it printed on stderr (libvirt's own warnings, say) only when it failed.
            text = f"{text or ''}\n--- stderr ---\n{(errors or '')[-4000:]}"
        (out / f"{name}.txt").write_text(text if isinstance(text, str) else text.decode())
        print(text[-1500:] if isinstance(text, str) else "", flush=True)
        with open(sink) as fh:
            got = [json.loads(line) for line in fh if line.strip()]
        os.unlink(sink)
        if code != 0:
            failed[name] = f"exit status {code} after {time.monotonic() - t0:.0f} s"
        for row in got:
            if row.get("raw"):
                row["ratio"] = round(row["ours"] / row["raw"], 2)
        rows += got
    with open("/proc/loadavg") as fh:
        load = fh.read().split()[:3]
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "loadavg_at_end": load},
        "failed": failed,
        "results": rows,
    }


def plot(report: dict[str, Any], previous: dict[str, Any] | None, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before = {
        (r["bench"], r["measure"]): r.get("ratio") for r in (previous or {}).get("results", [])
    }
    pairs = [r for r in report["results"] if r.get("ratio") is not None]
    if pairs:
        labels = [f"{r['measure']}\n({r['ours']:.4g} vs {r['raw']:.4g} {r['unit']})" for r in pairs]
        fig, ax = plt.subplots(figsize=(10, 0.75 * len(pairs) + 1.5))
        y = list(range(len(pairs)))
        ax.barh(y, [r["ratio"] for r in pairs], height=0.38, label=f"this run ({report['when']})")
        old = [before.get((r["bench"], r["measure"])) for r in pairs]
        if any(v is not None for v in old):
            ax.barh([i + 0.4 for i in y], [v or 0 for v in old], height=0.38, alpha=0.6,
                    label=f"previous ({(previous or {}).get('when', '?')})")  # fmt: skip
        for i, r in enumerate(pairs):
            ax.text(r["ratio"], i, f" {r['ratio']:.2f}x", va="center", fontsize=8)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.axvline(1.5, color="red", linestyle="--", linewidth=0.8, label="1.5x")
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("corral / raw tool, same run (lower is better; 1 = as fast as the tool)")
        ax.set_title("corral beside the raw tools")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "ratios.png", dpi=90)
        plt.close(fig)
    idle = [r for r in report["results"] if r["bench"] == "idle"]
    if idle:
        cts = [r["corrald_rss_mib"] for r in idle]
        counts = [int(r["measure"].split(",")[1].split()[0]) for r in idle]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(counts, [r["ours"] for r in idle], "o-", label="corrald CPU (% of a core)")
        ax.plot(counts, [r["etcd_cpu_percent"] for r in idle], "s-", label="etcd CPU (%)")
        if all(isinstance(r.get("before"), dict) for r in idle):
            ax.plot(counts, [r["before"]["corrald_cpu_percent"] for r in idle], "o:",
                    color="C0", alpha=0.5, label="corrald CPU, code before")  # fmt: skip
            ax.plot(counts, [r["before"]["etcd_cpu_percent"] for r in idle], "s:",
                    color="C1", alpha=0.5, label="etcd CPU, code before")  # fmt: skip
        ax.set_xlabel("idle busybox CTs on the node")
        ax.set_ylabel("% of one core")
        ax2 = ax.twinx()
        ax2.plot(counts, cts, "^--", color="gray", label="corrald RSS (MiB)")
        ax2.set_ylabel("MiB")
        ax.set_ylim(bottom=0)
        ax2.set_ylim(bottom=0)
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="lower right", fontsize=8)
        ax.set_title("Idle cost against guest count")
        fig.tight_layout()
        fig.savefig(out / "idle.png", dpi=90)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=list(BENCHES))
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    previous = json.loads(path.read_text()) if path.exists() else None
    report = run(args.only, out)
    if previous is not None:
        # Benchmarks not run this time keep their last figures (and say when).
        ran = set(args.only)
        kept = [
            {**r, "from": r.get("from") or previous.get("when")}
            for r in previous.get("results", [])
            if r["bench"] not in ran
        ]
        report["results"] = kept + report["results"]
        report["previous_when"] = previous.get("when")
    path.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, previous, out)
    print(
        f"wrote {path}, {out / 'ratios.png'}"
        + (", idle.png" if (out / "idle.png").exists() else "")
    )
    if report["failed"]:
        print(f"FAILED: {report['failed']}")
        sys.exit(1)


if __name__ == "__main__":
    main()
