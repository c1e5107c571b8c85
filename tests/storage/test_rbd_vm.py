"""A VM whose disk is a real Ceph RBD image boots under TCG and reads it through librbd
(the session's Ceph from tests/storage/conftest.py, the KVM driver on an embed root).

Bytes written into the image before the boot come back out of /dev/vda inside the
guest, and what the guest writes is in the image afterwards.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from corral.kvm.driver import QemuDriver
from corral.storage.volumes import Volumes
from tests.assets import guest
from tests.kvm.conftest import (  # noqa: F401 - node_dir is a fixture
    PREFIX,
    STORAGE,
    add_guest_files,
    new_vmid,
    node_dir,
    remove_domains,
    storage_configs,
)
from tests.kvm.serial import Serial, wait_ready
from tests.storage.conftest import RUN, rbd_config

pytestmark = pytest.mark.timeout(300)
RBD = f"{RUN}vmrbd"
MARK = b"corral-rbd-boot"


@pytest.fixture(scope="module")
def rbd_volumes(ceph: Any, node_dir: str) -> Volumes:  # noqa: F811
    configs = storage_configs(node_dir)
    configs[RBD] = rbd_config(ceph)
    return Volumes(lambda: configs, node="n1")


@pytest.fixture(scope="module")
def driver(node_dir: str, embed_uri: str) -> Iterator[QemuDriver]:  # noqa: F811 - node_dir
    drv = QemuDriver(node="n1", data_dir=f"{node_dir}/data",
                     options={"libvirt_uri": embed_uri, "domain_prefix": PREFIX})  # fmt: skip
    yield drv
    try:
        remove_domains(embed_uri)
    finally:
        drv.close()


def _rbd_io(ceph: Any, volid: str, cmd: str) -> str:
    image = volid.split(":", 1)[1]
    target = f"rbd:{RUN}pool/{image}:conf={ceph.conf_path}:id=admin"
    proc = subprocess.run(["qemu-io", "-f", "raw", "-c", cmd, target], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def nolog(_line: str) -> None:
    pass


def test_vm_boots_with_its_disk_on_rbd(
    ceph: Any,
    driver: QemuDriver,
    rbd_volumes: Volumes,
    guest_files: dict[str, str],
    node_dir: str,  # noqa: F811
) -> None:
    rbd_volumes.resolve(STORAGE)
    boot = add_guest_files(f"{node_dir}/store", guest_files)
    vmid = new_vmid()
    config = driver.create(
        vmid,
        {"name": "crlkvm-rbd", "memory": 160, "kvm": 0, "serial0": "socket",
         "virtio0": f"{RBD}:0.0625", **boot},
        volumes=rbd_volumes, log=nolog, params={},
    )  # fmt: skip
    volid = config["virtio0"].split(",")[0]
    assert volid.startswith(f"{RBD}:vm-{vmid}-disk-")
    mark = f"{node_dir}/mark"
    with open(mark, "wb") as f:
        f.write(MARK)
    _rbd_io(ceph, volid, f"write -s {mark} 0 {len(MARK)}")  # before the first boot
    console = Serial(*driver.serial_paths(vmid))
    try:
        driver.start(vmid, config, volumes=rbd_volumes, log=nolog)
        wait_ready(console, guest.MARKER_READY, timeout=180)
        assert console.run("head -c 15 /dev/vda") == MARK.decode()
        # 64 MiB, as allocated on the pool
        assert console.run("cat /sys/block/vda/size") == str((64 << 20) // 512)
        assert console.run("echo from-the-guest > /dev/vda; sync; echo done") == "done"
    finally:
        console.close()
        driver.stop(vmid, config, log=nolog)
    # qemu-io's dump shows the text column with '.' for punctuation
    assert "from.the.guest" in _rbd_io(ceph, volid, "read -v 0 32")
    driver.destroy(vmid, config, volumes=rbd_volumes, log=nolog)
    assert volid not in {v["volid"] for v in rbd_volumes.list_volumes(RBD)}
