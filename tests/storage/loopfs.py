"""Small real file systems for storage tests: a sparse file on a loop device, mounted.

Everything made is undone in reverse order, even when a step in the middle
fails, so a broken run leaves no mount, loop device or file behind.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

from corral.cluster.undo import Reverter


def _run(argv: list[str], timeout: float = 60) -> str:
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode()


def _umount(path: str) -> None:
    try:
        _run(["umount", path])
    except RuntimeError:
        _run(["umount", "-l", path])  # something still holds it: detach lazily


@contextlib.contextmanager
def loop_device(image: str, size: int) -> Iterator[str]:
    """A sparse file of `size` bytes attached to a free loop device."""
    with open(image, "wb") as f:
        f.truncate(size)
    undo = Reverter()
    undo.add(lambda: os.unlink(image))
    try:
        dev = _run(["losetup", "--find", "--show", image]).strip()
        undo.add(lambda: _run(["losetup", "-d", dev]))
        yield dev
    finally:
        undo.revert()


@contextlib.contextmanager
def loop_fs(image: str, mountpoint: str, *, size: int, mkfs: list[str]) -> Iterator[str]:
    """`mkfs` (argv without the device) on a loop device, mounted at `mountpoint`."""
    with loop_device(image, size) as dev:
        _run([*mkfs, dev], timeout=120)
        os.makedirs(mountpoint, exist_ok=True)
        undo = Reverter()
        undo.add(lambda: os.rmdir(mountpoint))
        try:
            _run(["mount", dev, mountpoint])
            undo.add(lambda: _umount(mountpoint))
            yield mountpoint
        finally:
            undo.revert()


@contextlib.contextmanager
def tmpfs(mountpoint: str, *, size: int) -> Iterator[str]:
    """A tiny tmpfs: a dir storage that really runs out of space."""
    os.makedirs(mountpoint, exist_ok=True)
    undo = Reverter()
    undo.add(lambda: os.rmdir(mountpoint))
    try:
        _run(["mount", "-t", "tmpfs", "-o", f"size={size}", "crlst-tmpfs", mountpoint])
        undo.add(lambda: _umount(mountpoint))
        yield mountpoint
    finally:
        undo.revert()
