"""The node's VM status round against status() of each VM, side by side in one
run (not collected by pytest).

    /opt/corral/venv/bin/python tests/bench/bench_kvm_status.py [--vms 20] [--rounds 20]

Starts N small TCG VMs (64 MiB, one 10 MiB disk, no kernel: SeaBIOS finds
nothing to boot and waits) on a `qemu:///embed` root of their own, then times,
rounds interleaved:
- the round, `status_many(cached=True)`: every state from one getAllDomainStats
  call, a VM's figures (QEMU monitor queries) every FIGURES_EVERY rounds;
- `status()` of each VM: a domain lookup, then state, info, memoryStats and
  blockStats, every VM every round (what the round did before);
- libvirt's own bulk call with the balloon and block groups, which gives every
  figure in one call but queries each VM's monitor in turn all the same.
Means over the rounds (a multiple of FIGURES_EVERY: the reads are spread).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import libvirt

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from corral.cluster.guest_driver import FIGURES_EVERY  # noqa: E402
from corral.kvm.driver import QemuDriver  # noqa: E402
from corral.storage.volumes import Volumes  # noqa: E402
from tests.bench.results import record  # noqa: E402
from tests.kvm.conftest import (  # noqa: E402
    STORAGE,
    kill_qemus_under,
    remove_domains,
    short_tmp,
    storage_configs,
)


def _nolog(_line: str) -> None:
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=4 * FIGURES_EVERY)
    args = ap.parse_args()
    base = short_tmp("crlbks")
    uri = f"qemu:///embed?root={base}/root"
    configs = storage_configs(base)
    volumes = Volumes(lambda: configs, node="n1")
    volumes.resolve(STORAGE)
    drv = QemuDriver(
        node="n1",
        data_dir=f"{base}/data",
        options={"libvirt_uri": uri, "domain_prefix": "crlbks-", "mac_seed": "crl-bench"},
    )
    try:
        items = []
        for vmid in range(70001, 70001 + args.vms):
            config = {"memory": 64, "kvm": 0, "virtio0": f"{STORAGE}:0.01"}
            config = drv.create(vmid, config, volumes=volumes, log=_nolog, params={})
            drv.start(vmid, config, volumes=volumes, log=_nolog)
            items.append((vmid, config))
        assert all(e["status"] == "running" for e in drv.status_many(items).values())
        groups = (
            libvirt.VIR_DOMAIN_STATS_STATE
            | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
            | libvirt.VIR_DOMAIN_STATS_BALLOON
            | libvirt.VIR_DOMAIN_STATS_BLOCK
        )
        conn = drv.lv.conn()
        per_vm, rounds, bulk = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for vmid, config in items:
                drv.status(vmid, config)
            t1 = time.perf_counter()
            drv.status_many(items, cached=True)
            t2 = time.perf_counter()
            conn.getAllDomainStats(groups, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
            t3 = time.perf_counter()
            per_vm.append((t1 - t0) * 1000)
            rounds.append((t2 - t1) * 1000)
            bulk.append((t3 - t2) * 1000)
        a, b, c = (statistics.mean(x) for x in (rounds, per_vm, bulk))
        print(f"{args.vms} running VMs, mean of {args.rounds} rounds: the round {a:.1f} ms, "
              f"status() of each {b:.1f} ms ({b / a:.1f}x), "
              f"getAllDomainStats with balloon+block {c:.1f} ms")  # fmt: skip
        record("kvm", f"VM status round, {args.vms} idle TCG VMs", ours=a, raw=b, unit="ms",
               raw_tool="status() of each VM", bulk_stats_ms=round(c, 3))  # fmt: skip
    finally:
        try:
            remove_domains(uri, "crlbks-")
        finally:
            drv.close()
            kill_qemus_under(base)
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
