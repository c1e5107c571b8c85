"""LXC driver vs the raw tools, side by side in one run (not collected by pytest).

    /opt/corral/venv/bin/python tests/bench/bench_lxc.py [--rounds 10] [--many 100]

1. create+start and stop+destroy of one busybox container: LxcDriver against
   `lxc-create -t none` + tar unpack + `lxc-start -d`, then `lxc-stop -k` +
   `lxc-destroy`; medians of `--rounds`.
2. `--many N`: start N containers through the driver; total time, host memory
   per idle container (MemAvailable drop) next to the RSS of LXC's own
   processes per container (monitor + init), and the driver process's growth.
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from corral.lxc import templates  # noqa: E402
from corral.lxc.driver import LxcDriver  # noqa: E402
from corral.storage.volumes import Volumes  # noqa: E402
from tests.lxc.helpers import STORAGE, add_template, dir_volumes  # noqa: E402

RAW_CONF = """\
lxc.uts.name = {name}
lxc.tty.max = 2
lxc.pty.max = 1024
lxc.signal.halt = SIGPWR
lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed
lxc.autodev = 1
lxc.cgroup.memory.limit_in_bytes = 67108864
"""


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def _wait_running(lxcpath: str, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["lxc-info", "-P", lxcpath, "-n", name, "-s"], capture_output=True, timeout=30
        ).stdout
        if b"RUNNING" in out:
            return
        time.sleep(0.01)
    raise RuntimeError(f"{name} did not start")


def raw_round(base: str, template: str, name: str) -> tuple[float, float]:
    lxcpath = os.path.join(base, "raw")
    os.makedirs(lxcpath, exist_ok=True)
    conf = os.path.join(base, f"{name}.conf")
    with open(conf, "w") as fh:
        fh.write(RAW_CONF.format(name=name))
    t0 = time.perf_counter()
    _run(["lxc-create", "-P", lxcpath, "-n", name, "-t", "none", "-f", conf])
    os.makedirs(os.path.join(lxcpath, name, "rootfs"), exist_ok=True)  # -t none may not
    _run(["tar", "-xzf", template, "-C", os.path.join(lxcpath, name, "rootfs")])
    _run(["lxc-start", "-P", lxcpath, "-n", name, "-d"])
    _wait_running(lxcpath, name)
    t1 = time.perf_counter()
    _run(["lxc-stop", "-P", lxcpath, "-n", name, "-k"])
    _run(["lxc-destroy", "-P", lxcpath, "-n", name])
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def driver_round(drv: LxcDriver, vols: Volumes, tid: str, vmid: int) -> tuple[float, float]:
    def log(_m: str) -> None:
        return None

    t0 = time.perf_counter()
    cfg = drv.create(
        vmid,
        {"memory": 64, "swap": 0, "rootfs": f"{STORAGE}:1"},
        volumes=vols,
        log=log,
        params={"ostemplate": tid},
    )
    drv.start(vmid, cfg, volumes=vols, log=log)
    t1 = time.perf_counter()
    drv.stop(vmid, cfg, log=log)
    drv.destroy(vmid, cfg, volumes=vols, log=log)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _monitor_pids(lxcpath: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if cmd.startswith(b"[lxc monitor]") and lxcpath.encode() in cmd:
                pids.append(int(pid))
    return pids


def many(drv: LxcDriver, vols: Volumes, tid: str, n: int) -> None:
    def log(_m: str) -> None:
        return None

    configs = {}
    for i in range(n):
        vmid = 88000 + i
        configs[vmid] = drv.create(
            vmid,
            {"memory": 64, "swap": 0, "rootfs": f"{STORAGE}:1"},
            volumes=vols,
            log=log,
            params={"ostemplate": tid},
        )
    time.sleep(2)
    avail0, self0 = _mem_available(), _rss(os.getpid())
    t0 = time.perf_counter()
    for vmid, cfg in configs.items():
        drv.start(vmid, cfg, volumes=vols, log=log)
    elapsed = time.perf_counter() - t0
    time.sleep(3)  # let the inits settle to idle
    avail1, self1 = _mem_available(), _rss(os.getpid())
    lxc_own = sum(_rss(p) for p in _monitor_pids(drv.lxcpath))
    lxc_own += sum(_rss(drv.status(v, c)["pid"]) for v, c in configs.items())
    each = elapsed / n * 1000
    print(f"start {n} containers (driver):          {elapsed:8.2f} s ({each:.1f} ms each)")
    print(f"host memory per idle container:         {(avail0 - avail1) / n / 1024:8.0f} KiB")
    print(f"  of which LXC's own (monitor + init):  {lxc_own / n / 1024:8.0f} KiB RSS")
    print(f"  driver process growth per container:  {(self1 - self0) / n / 1024:8.1f} KiB")
    for vmid, cfg in configs.items():
        drv.stop(vmid, cfg, log=log)
        drv.destroy(vmid, cfg, volumes=vols, log=log)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--many", type=int, default=0)
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="crl-bench-", dir="/var/tmp")
    os.chmod(base, 0o755)
    try:
        template = templates.build_busybox(os.path.join(base, "cache"), log=lambda _m: None)
        vols = dir_volumes(os.path.join(base, "storage"))
        tid = add_template(vols, template)
        drv = LxcDriver(node="crlbench", data_dir=os.path.join(base, "node"))
        raw = [raw_round(base, template, f"crlraw{i}") for i in range(args.rounds)]
        ours = [driver_round(drv, vols, tid, 87000 + i) for i in range(args.rounds)]
        med = statistics.median
        print(f"medians of {args.rounds} rounds          driver     raw lxc-* tools")
        for i, label in enumerate(("create+start", "stop+destroy")):
            ours_ms = med(o[i] for o in ours) * 1000
            raw_ms = med(r[i] for r in raw) * 1000
            print(f"{label:<24}{ours_ms:9.1f} ms {raw_ms:9.1f} ms")
        if args.many:
            many(drv, vols, tid, args.many)
    finally:
        for sub in ("raw", "node/lxc"):
            path = os.path.join(base, sub)
            if os.path.isdir(path):
                for name in os.listdir(path):
                    argv = ["lxc-stop", "-P", path, "-n", name, "-k"]
                    subprocess.run(argv, capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
