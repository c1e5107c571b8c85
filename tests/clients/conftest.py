"""A real corrald with a busybox template, shared by the clients' tests of a module."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kvm.conftest import kill_qemus_under, short_tmp, virsh_cleanup
from tests.lxc.helpers import cleanup_lxcpath
from tests.util import VENV_BIN, Corrald

NODE = "node1"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corrald]:
    daemon = Corrald(tmp_path_factory.mktemp("clients") / "node", node=NODE)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        cleanup_lxcpath(str(daemon.data_dir / "lxc"))


@pytest.fixture(scope="module")
def vm_node() -> Iterator[Corrald]:
    """A node whose VMs live in their own embedded libvirt root (removed afterwards)."""
    base = short_tmp("crlcli")
    os.chmod(base, 0o711)  # unprivileged containers' uids must reach their roots below
    root = f"{base}/lv"
    uri = f"qemu:///embed?root={root}"
    daemon = Corrald(Path(base) / "node", node=NODE, extra=["--libvirt-uri", uri])
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        try:
            virsh_cleanup(uri)
        finally:
            kill_qemus_under(root)
            cleanup_lxcpath(str(daemon.data_dir / "lxc"))
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def template(node: Corrald) -> str:
    """`corral template build busybox` into the node's `local` storage: its volume ID."""
    proc = subprocess.run(
        [
            str(VENV_BIN / "corral"),
            "--data-dir",
            str(node.data_dir),
            "template",
            "build",
            "busybox",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "CORRAL_DATA_DIR": str(node.data_dir)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()
