"""Fixtures for real containers: a busybox template, a driver on a temp lxcpath,
a test bridge; everything they create is removed even when a test fails."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import bridges
from corral.lxc import templates
from corral.lxc.driver import LxcDriver
from corral.storage.volumes import Volumes
from tests.lxc.helpers import cleanup_lxcpath, dir_volumes


@pytest.fixture(scope="session")
def busybox_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    cache = tmp_path_factory.mktemp("tmpl")
    return templates.build_busybox(str(cache), log=lambda _m: None)


@pytest.fixture
def volumes(tmp_path: Path, busybox_template: str) -> Volumes:
    return dir_volumes(str(tmp_path / "storage"), busybox_template)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[LxcDriver]:
    # The data dir must be traversable by unprivileged containers' mapped root.
    data = tmp_path / "node"
    data.mkdir()
    for p in (tmp_path, data):
        os.chmod(p, 0o755)
    drv = LxcDriver(node="crlnode", data_dir=str(data), options={"mac_seed": "crl-test"})
    yield drv
    cleanup_lxcpath(drv.lxcpath)


@pytest.fixture
def vmid() -> int:
    return random.randint(70000, 79999)


@pytest.fixture
def bridge() -> Iterator[str]:
    name = f"crlbr{random.randint(1000, 9999)}"
    bridges.ensure_bridge(name, address="10.251.77.1/24")
    yield name
    bridges.delete_bridge(name)


@pytest.fixture
def subids() -> Iterator[None]:
    """root's id range for user namespaces, as install.sh must set it; restored after."""
    saved = {}
    for path in ("/etc/subuid", "/etc/subgid"):
        saved[path] = Path(path).read_text() if os.path.exists(path) else None
        if "root:100000:65536" not in (saved[path] or ""):
            with open(path, "a") as fh:
                fh.write("root:100000:65536\n")
    yield
    for path, text in saved.items():
        if text is None:
            os.unlink(path)
        else:
            Path(path).write_text(text)


def logs() -> tuple[list[str], object]:
    lines: list[str] = []
    return lines, lines.append
