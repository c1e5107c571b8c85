"""corral's etcd calls against bare gRPC calls on the same etcd, side by side in
one run (not collected by pytest).

    /opt/corral/venv/bin/python tests/bench/bench_etcd.py [--rounds 300] [--watches 2]

One embedded etcd (its data on /var/tmp, fsync'd as in production) and one
`Store`, with `--watches` watches open on its whole key space as corrald has
(the cluster view and the task worker). Rounds interleaved, medians:
- corral: `Store.get`, `Store.put` of a task record, and the end of a task: one
  transaction of three puts (the record, a log chunk, the node's status
  document) with the compare and the revision read-back corral makes, on a node
  of 10 guests and on one of `--big` guests (the whole document is written);
- the same request through aetcd on the store's asyncio loop, as every call
  went before 8623993 (the loop also delivers the watch events);
- raw: the same RPC as a bare blocking gRPC call, no corral code around it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import orjson
from aetcd import rpc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from corral.cluster import etcd_unary as unary  # noqa: E402
from corral.cluster.etcd_embed import EmbeddedEtcd  # noqa: E402
from corral.cluster.store import Store  # noqa: E402
from tests.bench.results import record  # noqa: E402
from tests.util import free_ports  # noqa: E402

TASK = {"upid": "UPID:n1:0000A1B2:0029F5D9:6B161B32:vzstart:100:root@pam:", "type": "vzstart",
        "status": "running", "node": "n1", "user": "root@pam", "starttime": 1796000000,
        "args": {"vmid": 100}}  # fmt: skip


def status_doc(guests: int) -> dict[str, Any]:
    """A node's gueststatus document (~310 bytes a guest, as the round writes it)."""
    return {str(v): {"vmid": v, "status": "running", "name": f"ct{v}", "type": "lxc",
                     "cpu": 0.0123, "cpus": 1, "mem": 12345678, "maxmem": 1 << 26, "swap": 0,
                     "maxswap": 0, "disk": 2345678, "maxdisk": 1 << 30, "netin": 12345,
                     "netout": 2345, "diskread": 0, "diskwrite": 0, "uptime": 12345,
                     "pid": 100000 + v, "time": 1796000000.123}
            for v in range(100, 100 + guests)}  # fmt: skip


DOC = status_doc(10)
LOG = {"lines": ["starting CT 100", "CT 100 started (pid 4100)", "TASK OK"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--watches", type=int, default=2)
    ap.add_argument("--big", type=int, default=1000, help="guests on the big node")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="crl-bench-etcd-", dir="/var/tmp")
    server = EmbeddedEtcd(Path(base) / "data", name="bench", client_port=free_ports(2))
    server.start()
    store = Store([server.endpoint], prefix="/bench/")
    channel = grpc.insecure_channel(unary.target(server.endpoint))
    kv = rpc.KVStub(channel)
    try:
        watches = [store.watch("", lambda _ev: None) for _ in range(args.watches)]
        k = store._k  # noqa: SLF001 - the very keys corral writes

        big = status_doc(args.big)

        def end_ops(doc: dict[str, Any]) -> list[Any]:
            return [("put", "tasks/n1/t", TASK), ("put", "tasklog/t/0", LOG), ("put", "st", doc)]

        def end_request(doc: dict[str, Any]) -> Any:
            return rpc.TxnRequest(
                compare=[unary.compare("mod", k("tasks/n1/t"), "<", 1 << 62)],
                success=[
                    unary.put_op(k("tasks/n1/t"), orjson.dumps(TASK)),
                    unary.put_op(k("tasklog/t/0"), orjson.dumps(LOG)),
                    unary.put_op(k("st"), orjson.dumps(doc)),
                    unary.get_op(k("tasks/n1/t")),
                ],
            )

        async def aetcd_txn(c: Any, doc: dict[str, Any]) -> Any:
            return await c.kvstub.Txn(end_request(doc), timeout=3)

        def end_case(doc: dict[str, Any]) -> dict[str, Callable[[], Any]]:
            return {
                "corral": lambda: store.txn_revision(
                    [("mod", "tasks/n1/t", "<", 1 << 62)], end_ops(doc)
                ),
                "aetcd loop": lambda: store.call(lambda c: aetcd_txn(c, doc)),
                "raw": lambda: kv.Txn(end_request(doc), timeout=3),
            }

        cases: dict[str, dict[str, Callable[[], Any]]] = {
            "get": {
                "corral": lambda: store.get("tasks/n1/t"),
                "aetcd loop": lambda: store.call(lambda c: c.get(k("tasks/n1/t"))),
                "raw": lambda: kv.Range(rpc.RangeRequest(key=k("tasks/n1/t")), timeout=3),
            },
            "put (a task record)": {
                "corral": lambda: store.put("tasks/n1/t", TASK),
                "aetcd loop": lambda: store.call(
                    lambda c: c.put(k("tasks/n1/t"), orjson.dumps(TASK))
                ),
                "raw": lambda: kv.Put(
                    rpc.PutRequest(key=k("tasks/n1/t"), value=orjson.dumps(TASK)), timeout=3
                ),
            },
            "txn of 3 puts (a task's end)": end_case(DOC),
            f"the same, node of {args.big} guests": end_case(big),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for case, ways in cases.items():
            for fn in ways.values():
                for _ in range(20):  # warm up: connections, caches
                    fn()
            for _ in range(args.rounds):
                for way, fn in ways.items():
                    t0 = time.perf_counter()
                    fn()
                    times.setdefault((case, way), []).append((time.perf_counter() - t0) * 1000)
        print(f"etcd on {base}, {args.watches} watches open, medians of {args.rounds} rounds")
        print(f"{'call':32}{'corral':>10}{'aetcd loop':>12}{'raw gRPC':>10}{'ratio':>8}")
        for case in cases:
            med = {way: statistics.median(times[(case, way)]) for way in cases[case]}
            ratio = med["corral"] / med["raw"]
            print(f"{case:32}{med['corral']:8.2f}ms{med['aetcd loop']:10.2f}ms"
                  f"{med['raw']:8.2f}ms{ratio:7.2f}x")  # fmt: skip
            before = round(med["aetcd loop"], 3)
            record("etcd", case, ours=med["corral"], raw=med["raw"], unit="ms",
                   raw_tool="bare blocking gRPC call", before=before)  # fmt: skip
        for watch in watches:
            watch.cancel()
    finally:
        channel.close()
        store.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
