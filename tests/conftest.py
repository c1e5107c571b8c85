"""Shared fixtures: a real etcd per session, isolated stores, a real corrald."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster.etcd_embed import EmbeddedEtcd
from corral.cluster.store import Store
from corral.cluster.store_api import StoreAPI
from corral.cluster.store_memory import MemoryStore
from tests.util import Corrald, free_ports


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        raise pytest.UsageError("corral's tests drive containers, VMs and namespaces: run as root")


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    """One real etcd for the whole session; tests isolate themselves by key prefix."""
    base = free_ports(2)
    server = EmbeddedEtcd(tmp_path_factory.mktemp("etcd") / "data", name="test", client_port=base)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["etcd", "memory"])
def store(request: pytest.FixtureRequest) -> Iterator[StoreAPI]:
    """Each test that takes `store` runs on etcd and on the in-memory store (real clock)."""
    if request.param == "memory":
        mem = MemoryStore()
        yield mem
        mem.close()
        return
    etcd: EmbeddedEtcd = request.getfixturevalue("etcd")
    s = Store([etcd.endpoint], prefix=f"/corral-test/{uuid.uuid4().hex}/")
    yield s
    try:
        s.delete_prefix("")
    finally:
        s.close()


@pytest.fixture(scope="module")
def corrald(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corrald]:
    """A real node daemon (private etcd, HTTPS, unix socket), shared by a module's tests."""
    node = Corrald(Path(tmp_path_factory.mktemp("corrald")))
    node.start()
    yield node
    node.stop()


@pytest.fixture
def fresh_corrald(tmp_path: Path) -> Iterator[Corrald]:
    """A node of the test's own, for tests that kill or restart things."""
    node = Corrald(tmp_path / "node")
    node.start()
    yield node
    node.stop()


# -- in-process libvirt, shared by every suite ------------------------------------
# libvirt opens ONE embedded QEMU driver per process: every test that drives VMs in
# this process (tests/kvm, the rbd boot in tests/storage) must use the same root.


@pytest.fixture(scope="session")
def embed_uri() -> Iterator[str]:
    from tests.kvm.conftest import kill_qemus_under, remove_domains, short_tmp

    root = short_tmp("crlkvm-lv")
    uri = f"qemu:///embed?root={root}"
    yield uri
    try:
        remove_domains(uri)
    finally:
        kill_qemus_under(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def guest_files() -> Iterator[dict[str, str]]:
    """A bootable tiny guest: the host's Debian kernel and a busybox initramfs."""
    from tests.assets import guest
    from tests.kvm.conftest import short_tmp

    out = short_tmp("crlkvm-guest")
    yield guest.build_guest(out)
    shutil.rmtree(out, ignore_errors=True)
