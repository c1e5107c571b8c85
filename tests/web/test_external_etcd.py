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


def test_nodes_on_one_external_etcd_share_the_cluster_ca(tmp_path: Path) -> None:
    """The second node takes the first's CA from etcd: a call forwarded between them
    passes certificate verification."""
    etcd = EmbeddedEtcd(tmp_path / "ext" / "data", name="ext", client_port=free_ports(2))
    etcd.start()
    one = Corrald(tmp_path / "one", node="node1", extra=["--etcd", etcd.endpoint])
    two = Corrald(tmp_path / "two", node="node2", extra=["--etcd", etcd.endpoint])
    try:
        one.start()
        two.start()
        assert (one.data_dir / "ssl" / "ca.pem").read_text() == (
            two.data_dir / "ssl" / "ca.pem"
        ).read_text()
        two.password = one.password  # one cluster, one admin
        s = two.session()
        r = s.get("/nodes/node1/status")
        assert r.status_code == 200, r.text
        assert r.headers["X-Corral-Node"] == "node1"  # forwarded, and TLS-verified
    finally:
        two.stop()
        one.stop()
        etcd.stop()
