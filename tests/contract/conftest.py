"""One contract suite for every guest driver: liblxc, libvirt (TCG) and the fake.

Each `Subject` is a real driver on real storage (dir storages on temp dirs,
a busybox container template, an embedded libvirt root) or the in-tree fake,
with what it needs to make a minimal guest. Everything made is removed at the
end, even when a test fails.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.cluster.guest_driver import GuestDriver

Make = Callable[[int], tuple[dict[str, Any], dict[str, Any]]]


@dataclass
class Subject:
    name: str
    driver: GuestDriver
    volumes: Any  # a real corral.storage.volumes.Volumes, or a stand-in for the fake
    make: Make  # vmid -> (config, create params) of a minimal guest
    # A create request whose storage cannot take the guest, and the key it must name.
    bad_create: tuple[dict[str, Any], dict[str, Any], str] | None = None
    made: list[tuple[int, dict[str, Any]]] = field(default_factory=list)

    def create(self, vmid: int) -> dict[str, Any]:
        config, params = self.make(vmid)
        out = self.driver.create(vmid, config, volumes=self.volumes, log=_noop, params=params)
        self.made.append((vmid, out))
        return out

    def cleanup(self) -> None:
        for vmid, config in self.made:
            try:
                self.driver.stop(vmid, config, log=_noop)
                self.driver.destroy(vmid, config, volumes=self.volumes, log=_noop)
            except Exception:  # noqa: BLE001 - already gone is fine
                pass


def _noop(_msg: str) -> None:
    return None


def new_vmid() -> int:
    return random.randint(60000, 69999)


def _fake(tmp: Path) -> Subject:
    from tests.web.fake_driver import FakeDriver

    driver = FakeDriver(node="n1", data_dir=str(tmp))
    return Subject("fake", driver, object(), lambda _v: ({"rootfs": "local:1"}, {}))


def _lxc(tmp: Path) -> tuple[Subject, Callable[[], None]]:
    from corral.lxc import templates
    from corral.lxc.driver import LxcDriver
    from tests.lxc.helpers import NO_CT_STORAGE, STORAGE, cleanup_lxcpath, dir_volumes

    data = tmp / "lxc-node"
    data.mkdir()
    for p in (tmp, data):
        os.chmod(p, 0o755)
    archive = templates.build_busybox(str(tmp / "tmpl"), log=_noop)
    volumes = dir_volumes(str(tmp / "lxc-storage"), archive)
    driver = LxcDriver(node="crlnode", data_dir=str(data), options={"mac_seed": "crl-contract"})
    template = f"{STORAGE}:vztmpl/{os.path.basename(archive)}"

    def make(vmid: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"hostname": f"crl{vmid}", "memory": 64, "rootfs": f"{STORAGE}:0.1"}, {
            "ostemplate": template
        }

    bad = ({"rootfs": f"{NO_CT_STORAGE}:1"}, {"ostemplate": template}, "rootfs")
    return Subject("lxc", driver, volumes, make, bad), lambda: cleanup_lxcpath(driver.lxcpath)


def _qemu(tmp: Path, embed_uri: str) -> tuple[Subject, Callable[[], None]]:
    from corral.kvm.driver import QemuDriver
    from corral.storage.volumes import Volumes
    from tests.kvm.conftest import NOIMAGES, STORAGE, remove_domains, storage_configs

    configs = storage_configs(str(tmp / "kvm"))
    volumes = Volumes(lambda: configs, node="n1")
    prefix = "crlcontract-"
    driver = QemuDriver(
        node="n1",
        data_dir=str(tmp / "kvm" / "data"),
        options={"libvirt_uri": embed_uri, "domain_prefix": prefix, "mac_seed": "crl-contract"},
    )

    def make(vmid: int) -> tuple[dict[str, Any], dict[str, Any]]:
        return {"memory": 64, "kvm": 0, "virtio0": f"{STORAGE}:0.01"}, {}

    def close() -> None:
        try:
            remove_domains(embed_uri, prefix)
        finally:
            driver.close()

    bad = ({"memory": 64, "kvm": 0, "virtio0": f"{NOIMAGES}:1"}, {}, "virtio0")
    return Subject("qemu", driver, volumes, make, bad), close


@pytest.fixture(scope="module", params=["fake", "lxc", "qemu"])
def subject(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Subject]:
    # UNIX socket paths (QEMU monitors) must stay short: a short temp dir.
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=f"crlct-{request.param}-", dir="/tmp"))
    close: Callable[[], None] = lambda: None  # noqa: E731
    if request.param == "fake":
        subj = _fake(tmp)
    elif request.param == "lxc":
        subj, close = _lxc(tmp)
    else:
        subj, close = _qemu(tmp, request.getfixturevalue("embed_uri"))
    try:
        yield subj
    finally:
        subj.cleanup()
        close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
