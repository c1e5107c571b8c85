"""Bounded soak: random guest operations from several clients for a set time
against a real corrald (real etcd, real LXC), optionally with kill -9 of
corrald or of its etcd now and then; then the fault suite's invariants, checked
through the API and against the world, and a report (JSON on stdout).

Not part of CI's test run (it is not a test module). Run as root:

    /opt/corral/venv/bin/python -m tests.soak --seconds 120 --clients 4 --faults

Exit status 0 when every invariant holds.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.faults.world import NODE, fresh_resources, lxc_names, start, store
from tests.lxc.helpers import cleanup_lxcpath
from tests.lxc.test_api import corral
from tests.util import ApiSession, Corrald, wait_for

OPS = ("create", "start", "stop", "config", "destroy")


class Soak:
    def __init__(self, node: Corrald, template: str, vmids: list[int]) -> None:
        self.node, self.template, self.vmids = node, template, vmids
        self.counts: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.faults: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def count(self, op: str, outcome: str) -> None:
        with self.lock:
            self.counts[f"{op} {outcome}"] += 1
            if outcome not in ("OK", "refused"):
                self.errors[outcome[:120]] += 1

    def one(self, s: ApiSession, op: str, vmid: int) -> None:
        base = f"/nodes/{NODE}/lxc"
        create = {"vmid": vmid, "ostemplate": self.template, "rootfs": "local:1", "memory": 64}
        call: tuple[str, str, dict[str, Any]] = {
            "create": ("POST", base, create),
            "start": ("POST", f"{base}/{vmid}/status/start", {}),
            "stop": ("POST", f"{base}/{vmid}/status/stop", {}),
            "config": ("PUT", f"{base}/{vmid}/config", {"memory": random.choice([64, 96, 128])}),
            "destroy": ("DELETE", f"{base}/{vmid}", {}),
        }[op]
        r = s.request(call[0], call[1], data=call[2], timeout=30)
        if r.status_code in (400, 404, 409):
            self.count(op, "refused")  # no such guest, exists, locked: expected in a race
            return
        if r.status_code == 503:
            self.count(op, "refused")  # etcd restarting: said at once, as promised
            return
        if r.status_code != 200:
            self.count(op, f"HTTP {r.status_code}: {r.text[:80]}")
            return
        upid = r.json()["data"]
        if not isinstance(upid, str) or not upid.startswith("UPID:"):
            self.count(op, "OK")  # a synchronous config change
            return
        st = s.wait_task(upid, timeout=120)
        exit_ = str(st.get("exitstatus"))
        benign = ("already running", "not running", "does not exist", "locked", "is running")
        self.count(op, "OK" if exit_ == "OK" else "refused" if any(
            b in exit_ for b in benign) else exit_)  # fmt: skip

    def client(self, seed: int) -> None:
        rnd = random.Random(seed)
        s = self.node.session()
        while not self.stop.is_set():
            op, vmid = rnd.choice(OPS), rnd.choice(self.vmids)
            try:
                self.one(s, op, vmid)
            except Exception as err:  # noqa: BLE001 - counted: a fault makes calls fail
                self.count(op, f"{type(err).__name__}")
                time.sleep(0.5)
                try:
                    s = self.node.session()
                except Exception:  # noqa: BLE001 - the node is restarting
                    time.sleep(1)

    def fault_loop(self, every: float) -> None:
        while not self.stop.wait(every):
            if random.random() < 0.5:
                pid = self.node.etcd_pid()
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    self.faults.append(f"{time.strftime('%H:%M:%S')} kill -9 etcd")
            else:
                proc = self.node.proc
                if proc is None:
                    continue
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                self.node.proc = None
                wait_for(lambda: self.node.etcd_pid() is None, 15, 0.1, what="etcd gone")
                self.faults.append(f"{time.strftime('%H:%M:%S')} kill -9 corrald")
                start(self.node)

    def invariants(self) -> dict[str, Any]:
        """The fault suite's invariants, through the API and against the world."""
        s = self.node.session()
        out: dict[str, Any] = {}

        def settled() -> bool:
            tasks = s.data("GET", f"/nodes/{NODE}/tasks", params={"source": "active"})
            return not tasks

        stuck: list[dict[str, Any]] = []
        try:
            wait_for(settled, 60, 0.5, what="no active task")
        except AssertionError:  # reported with what those tasks logged last
            active = s.data("GET", f"/nodes/{NODE}/tasks", params={"source": "active"})
            stuck = [
                {**t, "log": s.data("GET", f"/nodes/{NODE}/tasks/{t['upid']}/log")[-5:]}
                for t in active
            ]
        out["no task active 60 s after the clients stopped"] = stuck == []
        rows = [g for g in fresh_resources(s) if g.get("type") == "lxc"]
        api = {int(g["vmid"]) for g in rows}
        api_running = {int(g["vmid"]) for g in rows if g.get("status") == "running"}
        st = store(self.node)
        try:
            etcd = {int(kv.value["vmid"]) for kv in st.range("guests/")}
            locked = sorted(int(kv.value["vmid"]) for kv in st.range("guests/")
                            if kv.value.get("lock"))  # fmt: skip
            unfinished = [kv.value["upid"] for kv in st.range(f"tasks/{NODE}/")
                          if kv.value["status"] != "stopped"]  # fmt: skip
        finally:
            st.close()
        defined = {int(n) for n in lxc_names(self.node) if n.isdigit()}
        active = {int(n) for n in lxc_names(self.node, active=True) if n.isdigit()}
        images = self.node.data_dir / "local" / "images"
        owners = list(images.iterdir()) if images.exists() else []
        on_disk = {int(p.name) for p in owners if any(p.iterdir())}
        out["guests API = etcd = lxc = volumes"] = api == etcd == defined == on_disk
        out["running API = lxc --active"] = api_running == active
        out["no lock left"] = locked == []
        out["no task unfinished"] = unfinished == []
        out["detail"] = {"api": sorted(api), "etcd": sorted(etcd), "lxc": sorted(defined),
                         "volumes": sorted(on_disk), "running_api": sorted(api_running),
                         "running_lxc": sorted(active), "locked": locked,
                         "unfinished": unfinished, "stuck": stuck}  # fmt: skip
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--guests", type=int, default=6, help="size of the VMID pool")
    ap.add_argument("--faults", action="store_true", help="kill -9 corrald or its etcd")
    ap.add_argument("--fault-every", type=float, default=15)
    ap.add_argument("--log", help="keep corrald's log (every restart's) in this file")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="corral-soak-"))
    tmp.chmod(0o755)
    node = Corrald(tmp / "node")
    t0 = time.monotonic()
    try:
        start(node)
        template = corral(node, "corral", "--data-dir", str(node.data_dir), "template",
                          "build", "busybox").stdout.strip()  # fmt: skip
        soak = Soak(node, template, list(range(8100, 8100 + args.guests)))
        threads = [threading.Thread(target=soak.client, args=(i,)) for i in range(args.clients)]
        if args.faults:
            threads.append(threading.Thread(target=soak.fault_loop, args=(args.fault_every,)))
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        soak.stop.set()
        for t in threads:
            t.join(180)
        if node.proc is None:
            start(node)
        checks = soak.invariants()
        # A fault may refuse a call (503, counted as refused) or cut it off,
        # never break it: any other 5xx is a bug whatever the state says after.
        checks["no HTTP 5xx but 503"] = not any(e.startswith("HTTP 5") for e in soak.errors)
        ok = all(v for k, v in checks.items() if k != "detail")
        report = {
            "seconds": args.seconds, "clients": args.clients, "guests": args.guests,
            "operations": dict(sorted(soak.counts.items())), "errors": dict(soak.errors),
            "faults": soak.faults, "invariants": checks, "passed": ok,
            "wall_seconds": round(time.monotonic() - t0, 1),
        }  # fmt: skip
        json.dump(report, sys.stdout, indent=1)
        print()
        return 0 if ok else 1
    finally:
        node.stop()
        if args.log:
            shutil.copyfile(node.data_dir / "test-corrald.log", args.log)
        cleanup_lxcpath(str(node.data_dir / "lxc"))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
