"""A real corrald with a busybox template, shared by the clients' tests of a module."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

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
