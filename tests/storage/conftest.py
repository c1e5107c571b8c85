"""Real storages for the contract suite: one fixture, parametrized over backends.

dir on a temp dir, btrfs on a loop-mounted sparse file, rbd on a real
single-node Ceph started once per session, zfspool on zfs-fuse with a pool
on a file. Each is reached through `Volumes` (the facade guests and the API
use) and through its plugin directly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from corral.storage.plugin import StoragePlugin
from corral.storage.volumes import Volumes, plugin_for_type
from tests.storage import loopfs
from tests.util import free_ports

RUN = f"crlst{uuid.uuid4().hex[:6]}"  # unique per run: names never collide with others' tests
# CORRAL_STORAGE_BACKENDS=dir,btrfs narrows a run while working on one backend.
BACKENDS = [
    b for b in os.environ.get("CORRAL_STORAGE_BACKENDS", "dir,btrfs,rbd,zfspool").split(",") if b
]
MiB = 1 << 20


@dataclass
class Backend:
    """One storage under test and what it can hold."""

    name: str
    sid: str
    cfg: dict[str, Any]
    image_fmt: str | None  # the VM-disk format that snapshots, None: no VM disks here
    rootdir: bool  # container roots (subvol) supported
    formats: tuple[str, ...]  # VM-disk formats alloc must accept
    no_images: str = ""  # why VM disks are not tested here
    # (storage id, config, size that cannot fit) of a storage that really fills up
    full: tuple[str, dict[str, Any], int] | None = None
    no_full: str = ""
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def plugin(self) -> StoragePlugin:
        return plugin_for_type(self.cfg["type"])

    def volumes(self) -> Volumes:
        cfgs = {self.sid: self.cfg, **self.extra}
        if self.full:
            cfgs[self.full[0]] = self.full[1]
        return Volumes(lambda: cfgs, node="n1")


def _base(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    path = tmp_path_factory.mktemp(f"{RUN}-{name}")
    return str(path)


@contextlib.contextmanager
def dir_backend(base: str) -> Iterator[Backend]:
    with loopfs.tmpfs(os.path.join(base, "tiny"), size=32 * MiB) as tiny:
        yield Backend(
            "dir",
            f"{RUN}dir",
            {"type": "dir", "path": os.path.join(base, "store")},
            image_fmt="qcow2",
            rootdir=True,
            formats=("raw", "qcow2"),
            full=(
                f"{RUN}dirfull",
                {"type": "dir", "path": tiny, "preallocation": "falloc"},
                256 * MiB,
            ),
        )


@contextlib.contextmanager
def btrfs_backend(base: str) -> Iterator[Backend]:
    mnt = os.path.join(base, "mnt")
    with loopfs.loop_fs(
        os.path.join(base, "btrfs.img"), mnt, size=400 * MiB, mkfs=["mkfs.btrfs", "-q", "-f"]
    ):
        path = os.path.join(mnt, "store")
        yield Backend(
            "btrfs",
            f"{RUN}btrfs",
            {"type": "btrfs", "path": path},
            image_fmt="raw",
            rootdir=True,
            formats=("raw",),
            # The same small file system, preallocating: a disk larger than it cannot fit.
            full=(
                f"{RUN}btrfsfull",
                {"type": "btrfs", "path": path, "preallocation": "falloc"},
                1024 * MiB,
            ),
        )


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not shutil.which("ceph-mon"):
        pytest.skip("ceph-mon is not installed (install.sh --test-deps installs it)")
    from corral.storage.ceph_cluster import CephCluster

    port = free_ports(3)
    cluster = CephCluster(
        _base(tmp_path_factory, "ceph"),
        mon_port=port,
        mon_v1_port=port + 1,
        osd_ports=(port + 2, port + 2 + 40),
    )
    try:
        cluster.start(timeout=120)
        cluster.create_pool(f"{RUN}pool")
        yield cluster
    finally:
        cluster.stop()


def rbd_config(ceph: Any, content: str = "images") -> dict[str, Any]:
    """An rbd storage's config on the test cluster's pool."""
    return {
        "type": "rbd",
        "pool": f"{RUN}pool",
        "monhost": ceph.monhost,
        "username": "admin",
        "keyring": ceph.keyring_path,
        "conf": ceph.conf_path,
        "content": content,
    }


@contextlib.contextmanager
def rbd_backend(ceph: Any) -> Iterator[Backend]:
    yield Backend(
        "rbd",
        f"{RUN}rbd",
        rbd_config(ceph),
        image_fmt="raw",
        rootdir=False,
        formats=("raw",),
        no_full="RBD images are thin: a pool fills only when written, and a full OSD "
        "stops the shared test cluster",
    )


@pytest.fixture(scope="session")
def zfs_fuse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not shutil.which("zfs-fuse"):
        pytest.skip("zfs-fuse is not installed (install.sh --test-deps installs it)")
    from tests.storage.zfsfuse import ZfsFuse

    with ZfsFuse(_base(tmp_path_factory, "zfs"), pool=f"{RUN}tank") as zfs:
        yield zfs


@contextlib.contextmanager
def zfs_backend(zfs: Any) -> Iterator[Backend]:
    yield Backend(
        "zfspool",
        f"{RUN}zfs",
        {
            "type": "zfspool",
            "pool": f"{zfs.pool}/store",
            "mountpoint": zfs.mountpoint + "/store",
            "content": "images,rootdir",
        },
        image_fmt=None,
        rootdir=True,
        formats=(),
        no_images="zfs-fuse has no zvols",
        no_full="zfs-fuse never reports a full pool at allocation (refquota is a limit, "
        "not a reservation)",
    )


@pytest.fixture(scope="module", params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    name = request.param
    if name == "dir":
        cm: contextlib.AbstractContextManager[Backend] = dir_backend(_base(tmp_path_factory, name))
    elif name == "btrfs":
        if not shutil.which("mkfs.btrfs"):
            pytest.skip("btrfs-progs is not installed")
        cm = btrfs_backend(_base(tmp_path_factory, name))
    elif name == "rbd":
        cm = rbd_backend(request.getfixturevalue("ceph"))
    else:
        cm = zfs_backend(request.getfixturevalue("zfs_fuse"))
    with cm as b:
        b.plugin.activate(b.cfg)
        yield b
        b.plugin.deactivate(b.cfg)
