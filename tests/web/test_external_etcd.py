"""A node given --etcd joins that ensemble instead of starting its own."""

from __future__ import annotations

from pathlib import Path

from corral.cluster.etcd_embed import EmbeddedEtcd
from corral.cluster.store import Store
from tests.util import Corrald, free_ports


def test_corrald_uses_the_given_etcd(tmp_path: Path) -> None:
    etcd = EmbeddedEtcd(tmp_path / "ext" / "data", name="ext", client_port=free_ports(2))
    etcd.start()
    node = Corrald(tmp_path / "node", extra=["--etcd", etcd.endpoint])
    try:
        node.start()
        assert node.etcd_pid() is None  # no private etcd under its data dir
        assert node.session().data("GET", "/nodes")[0]["node"] == "node1"
        store = Store([etcd.endpoint])
        try:
            assert store.get_value("nodeinfo/node1")["node"] == "node1"
        finally:
            store.close()
    finally:
        node.stop()
        etcd.stop()
