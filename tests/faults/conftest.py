"""Fixtures of the fault suite: one corrald of the test's own (it gets killed),
a busybox template; every container and file is removed even when a test fails."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lxc.helpers import cleanup_lxcpath
from tests.lxc.test_api import corral
from tests.util import Corrald

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Corrald]:
    """A corrald not yet started (tests start it with their fault hook)."""
    tmp_path.chmod(0o755)  # containers' mapped root traverses it
    daemon = Corrald(tmp_path / "node")
    yield daemon
    daemon.stop()
    cleanup_lxcpath(str(daemon.data_dir / "lxc"))


def install_template(node: Corrald) -> str:
    return corral(
        node, "corral", "--data-dir", str(node.data_dir), "template", "build", "busybox"
    ).stdout.strip()


@pytest.fixture
def vmid() -> int:
    return random.randint(7000, 7999)
