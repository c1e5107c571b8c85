"""A node's private etcd is its own: a second corrald on the same host with the
same etcd port never joins the first node's cluster (issue 10 item 1)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from corral.cluster.etcd_embed import EmbeddedEtcd, port_holder
from corral.cluster.store import Store
from tests.util import VENV_BIN, Corrald, free_ports, wait_for


def _corrald(data_dir: Path, node: str, etcd_port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(VENV_BIN / "corrald"),
            "--data-dir",
            str(data_dir),
            "--listen",
            f"127.0.0.1:{free_ports(1)}",
            "--node",
            node,
            "--etcd-port",
            str(etcd_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_second_node_on_the_same_etcd_port_exits_at_once(tmp_path: Path) -> None:
    first = Corrald(tmp_path / "one", node="node1").start()
    second = _corrald(tmp_path / "two", "node2", first.etcd_port)
    try:
        started = time.monotonic()
        out, _ = second.communicate(timeout=30)
        text = out.decode(errors="replace")
        assert second.returncode != 0, text
        pid = first.etcd_pid()
        assert f"etcd: port {first.etcd_port} in use by pid {pid}" in text, text
        assert "restarting" not in text  # no restart loop
        assert time.monotonic() - started < 20
        nodes = [n["node"] for n in first.session().data("GET", "/nodes")]
        assert nodes == ["node1"]
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(10)
        first.stop()


def test_node_stops_when_another_process_takes_its_etcd_port(tmp_path: Path) -> None:
    """The private etcd dies and someone else binds its port before the restart: the
    node stops with the holder named instead of looping (or reaching the other)."""
    node = Corrald(tmp_path / "node", node="node1").start()
    squatter = socket.socket()
    try:
        pid = node.etcd_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        wait_for(lambda: _bind(squatter, node.etcd_port), timeout=10, what="port freed")
        squatter.listen(1)
        assert node.proc is not None
        node.proc.wait(30)
        log = (node.data_dir / "test-corrald.log").read_text(errors="replace")
        assert f"etcd: port {node.etcd_port} in use by pid {os.getpid()}" in log, log
        assert log.count("restarting in") <= 1
    finally:
        squatter.close()
        node.stop()


def _bind(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def test_store_reaches_the_private_etcd_over_its_own_socket(tmp_path: Path) -> None:
    etcd = EmbeddedEtcd(tmp_path / "etcd" / "data", name="t", client_port=free_ports(2))
    etcd.start()
    try:
        assert etcd.socket_path.is_socket()
        store = Store([etcd.local_endpoint], timeout=5)
        try:
            store.put("x", {"a": 1})
            assert store.get_value("x") == {"a": 1}
        finally:
            store.close()
        assert port_holder(etcd.client_port) == etcd.proc.pid  # type: ignore[union-attr]
    finally:
        etcd.stop()
