"""Benchmark: a CT terminal's keystroke-to-answer round trip through termproxy +
vncwebsocket (TLS, WebSocket, pty, lxc-attach), beside the raw tool (lxc-attach on a
pty of our own, no network), and the time to open a console (termproxy call + upgrade
+ the shell's first prompt).

    /opt/corral/venv/bin/python tests/bench/bench_console.py [--rounds 200]

Starts its own corrald (private etcd) and a busybox CT on free loopback ports; stops
and removes both.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import websocket  # noqa: E402

from tests.lxc.helpers import cleanup_lxcpath  # noqa: E402
from tests.util import VENV_BIN, Corrald  # noqa: E402

VMID = 990


def figures(name: str, samples: list[float]) -> None:
    samples.sort()
    p50 = statistics.median(samples) * 1000
    p95 = samples[int(len(samples) * 0.95) - 1] * 1000
    print(f"{name:<44} p50 {p50:7.2f} ms   p95 {p95:7.2f} ms   ({len(samples)} rounds)")


def ws_round_trips(node: Corrald, rounds: int) -> tuple[list[float], list[float]]:
    api = node.session()
    opens, trips = [], []
    path = f"/nodes/node1/lxc/{VMID}"
    for i in range(rounds):
        t0 = time.perf_counter()
        proxy = api.data("POST", f"{path}/termproxy")
        ws = websocket.create_connection(
            node.url.replace("https://", "wss://")
            + f"/api2/json{path}/vncwebsocket?port={proxy['port']}"
            + f"&vncticket={quote(proxy['ticket'], safe='')}",
            cookie=f"PVEAuthCookie={quote(api.ticket, safe='')}",
            sslopt={"ca_certs": api.ca, "cert_reqs": ssl.CERT_REQUIRED},
            subprotocols=["binary"],
            timeout=20,
        )
        ws.send(f"admin@pve:{proxy['ticket']}\n")
        got = b""
        while b"# " not in got:
            got += ws.recv()
        opens.append(time.perf_counter() - t0)
        if i == 0 or i % 10 == 0:  # reuse the console for the keystroke rounds
            for n in range(max(1, rounds // 10)):
                line = f"echo r{n}x$((1+{n}))\n".encode()
                t1 = time.perf_counter()
                ws.send(b"0:%d:" % len(line) + line, opcode=websocket.ABNF.OPCODE_BINARY)
                want = f"r{n}x{1 + n}".encode()
                seen = b""
                while want not in seen:
                    seen += ws.recv()
                trips.append(time.perf_counter() - t1)
        ws.close()
        if len(opens) >= max(10, rounds // 10):
            break
    return opens, trips


def raw_round_trips(node: Corrald, rounds: int) -> list[float]:
    master, slave = pty.openpty()
    argv = ["lxc-attach", "-P", str(node.data_dir / "lxc"), "-n", str(VMID), "--clear-env",
            "--", "/bin/sh", "-l"]  # fmt: skip
    proc = subprocess.Popen(["setsid", "-c", *argv], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)

    def read_until(want: bytes) -> None:
        seen = b""
        while want not in seen:
            select.select([master], [], [], 10)
            seen += os.read(master, 65536)

    read_until(b"# ")
    trips = []
    for n in range(rounds):
        line = f"echo r{n}x$((1+{n}))\n".encode()
        t1 = time.perf_counter()
        os.write(master, line)
        read_until(f"r{n}x{1 + n}".encode())
        trips.append(time.perf_counter() - t1)
    proc.kill()
    proc.wait()
    os.close(master)
    return trips


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crlbench") as tmp:
        node = Corrald(Path(tmp) / "node", node="node1")
        node.start()
        try:
            argv = [str(VENV_BIN / "corral"), "--data-dir", str(node.data_dir), "template",
                    "build", "busybox"]  # fmt: skip
            template = subprocess.run(argv, capture_output=True, text=True, check=True,
                                      timeout=300).stdout.strip()  # fmt: skip
            api = node.session()
            api.run_task("POST", "/nodes/node1/lxc", data={
                "vmid": VMID, "ostemplate": template, "rootfs": "local:1", "memory": 64,
                "start": 1,
            })  # fmt: skip
            opens, trips = ws_round_trips(node, args.rounds)
            raw = raw_round_trips(node, args.rounds)
            figures("open a console (termproxy+upgrade+prompt)", opens)
            figures("keystroke round trip, WebSocket console", trips)
            figures("keystroke round trip, raw lxc-attach pty", raw)
            api.run_task("POST", f"/nodes/node1/lxc/{VMID}/status/stop")
        finally:
            node.stop()
            cleanup_lxcpath(str(node.data_dir / "lxc"))


if __name__ == "__main__":
    main()
