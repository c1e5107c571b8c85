"""One real corrald per test module or package, started and removed the same way
everywhere: with the LXC driver only, or with the QEMU driver on its own embed root.
Everything a node made is removed even when a test fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from corral.cluster.store import Store
from tests.kvm.conftest import kill_qemus_under, short_tmp, virsh_cleanup
from tests.lxc.helpers import cleanup_lxcpath
from tests.util import Corrald


@contextmanager
def ct_node(
    data_dir: Path, *, node: str = "node1", extra: list[str] | None = None
) -> Iterator[Corrald]:
    """A started corrald (its own etcd, liblxc, `local` dir storage) in `data_dir`."""
    daemon = Corrald(data_dir, node=node, extra=extra)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        cleanup_lxcpath(str(daemon.data_dir / "lxc"))


def install_guest_files(daemon: Corrald, guest_files: dict[str, str]) -> None:
    """The tiny test guest's kernel and initramfs, as `local:snippets/vmlinuz|initrd.img`."""
    snippets = daemon.data_dir / "local" / "snippets"
    shutil.copy(guest_files["kernel"], snippets / "vmlinuz")
    shutil.copy(guest_files["initrd"], snippets / "initrd.img")


@contextmanager
def vm_node(
    prefix: str, guest_files: dict[str, str], *, node: str = "node1"
) -> Iterator[tuple[Corrald, str]]:
    """A started corrald that also runs VMs on its own `qemu:///embed` root, with the tiny
    test guest's kernel and initramfs in `local:snippets/`; yields it and the libvirt URI.

    The daemon is another process, so its embed root is cleaned with `virsh` after it
    stopped (one embed root per process: this test process holds the session's)."""
    base = short_tmp(prefix)  # QEMU's UNIX sockets need short paths
    os.chmod(base, 0o755)  # containers' unprivileged ids must reach their rootfs
    uri = f"qemu:///embed?root={base}/lv"
    daemon = Corrald(Path(base) / "node", node=node, extra=["--libvirt-uri", uri])
    try:
        daemon.start()
        install_guest_files(daemon, guest_files)
        yield daemon, uri
    finally:
        daemon.stop()
        cleanup_lxcpath(str(daemon.data_dir / "lxc"))
        try:
            virsh_cleanup(uri)
        finally:
            kill_qemus_under(base)
            shutil.rmtree(base, ignore_errors=True)


@contextmanager
def node_store(daemon: Corrald) -> Iterator[Store]:
    """The daemon's own etcd, for what the API does not offer and for checks."""
    store = Store([f"http://127.0.0.1:{daemon.etcd_port}"])
    try:
        yield store
    finally:
        store.close()
