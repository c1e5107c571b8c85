"""Fixtures for real VMs under TCG: one libvirt embed root for the session (libvirt
allows one per process), dir storages laid out as Proxmox's, the tiny guest,
a test bridge. Everything is removed at the end, even when a test fails."""

from __future__ import annotations

import os

# libvirt reads its log settings when first loaded (corral.kvm sets the same).
os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", "4:stderr")
import random
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from corral.cluster import bridges
from corral.kvm.driver import QemuDriver
from corral.kvm.libvirt_conn import Libvirt
from corral.storage.volumes import Volumes
from tests.util import vmid_picker

PREFIX = "crlkvm-"
STORAGE = "crlkvm"
NOIMAGES = "crlkvmiso"  # a storage that takes no disk images


new_vmid = vmid_picker(80000, 89999)


def short_tmp(prefix: str) -> str:
    # UNIX socket paths (QEMU monitors, serial sockets) must stay under 108 bytes.
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def remove_domains(uri: str, prefix: str = PREFIX) -> None:
    lv = Libvirt(uri)
    try:
        for dom in lv.run("list", lambda: lv.conn().listAllDomains(0), timeout=60):
            if not dom.name().startswith(prefix):
                continue
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError:
                pass
    finally:
        lv.close()


def virsh_cleanup(uri: str) -> None:
    """Remove every domain of an embed root another process used (through virsh)."""

    def virsh(*args: str) -> str:
        proc = subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        return proc.stdout

    for name in virsh("list", "--all", "--name").split():
        virsh("destroy", name)
        virsh("undefine", "--nvram", name)


def qemu_pids(path: str) -> list[int]:
    """QEMU processes whose command line names `path` (a test's own tree)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and path.encode() in cmd:
            out.append(int(entry.name))
    return sorted(out)


def kill_qemus_under(path: str) -> None:
    """Last resort: QEMU processes whose command line names `path` (our root only)."""
    for pid in qemu_pids(path):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def storage_configs(base: str) -> dict[str, dict[str, Any]]:
    return {
        STORAGE: {"type": "dir", "path": f"{base}/store",
                  "content": "images,iso,snippets,rootdir,vztmpl"},
        NOIMAGES: {"type": "dir", "path": f"{base}/isos", "content": "iso,snippets"},
    }  # fmt: skip


def add_guest_files(store_path: str, files: dict[str, str]) -> dict[str, str]:
    """Kernel and initramfs as `snippets` volumes; returns the config keys that boot them."""
    snippets = os.path.join(store_path, "snippets")
    os.makedirs(snippets, exist_ok=True)
    shutil.copy(files["kernel"], os.path.join(snippets, "vmlinuz"))
    shutil.copy(files["initrd"], os.path.join(snippets, "initrd.img"))
    return {
        "kernel": f"{STORAGE}:snippets/vmlinuz",
        "initrd": f"{STORAGE}:snippets/initrd.img",
        "cmdline": files["cmdline"],
    }


@pytest.fixture(scope="module")
def node_dir() -> Iterator[str]:
    base = short_tmp("crlkvm-node")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def volumes(node_dir: str) -> Volumes:
    configs = storage_configs(node_dir)
    return Volumes(lambda: configs, node="n1")


@pytest.fixture(scope="module")
def boot_keys(node_dir: str, guest_files: dict[str, str], volumes: Volumes) -> dict[str, str]:
    volumes.resolve(STORAGE)  # activates: creates the folders
    return add_guest_files(f"{node_dir}/store", guest_files)


@pytest.fixture(scope="module")
def driver(node_dir: str, embed_uri: str) -> Iterator[QemuDriver]:
    drv = QemuDriver(
        node="n1",
        data_dir=f"{node_dir}/data",
        options={"libvirt_uri": embed_uri, "domain_prefix": PREFIX, "mac_seed": "crl-test"},
    )
    yield drv
    try:
        remove_domains(embed_uri)
    finally:
        drv.close()


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    name = f"crlkb{random.randint(1000, 9999)}"
    bridges.ensure_bridge(name)
    yield name
    bridges.delete_bridge(name)


def images(node_dir: str) -> list[str]:
    """Every file under the images folder of the test storage."""
    root = Path(node_dir) / "store" / "images"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []
