"""qemu-img as the file-image tool of dir and btrfs storages (argv lists only)."""

from __future__ import annotations

import json
from typing import Any

from corral.storage.cmd import out, run

QEMU_IMG = "qemu-img"
_TIMEOUT = 120.0


def create(
    path: str, *, fmt: str, size: int, backing: str | None = None, preallocation: str | None = None
) -> None:
    argv = [QEMU_IMG, "create", "-q", "-f", fmt]
    opts = []
    if backing:
        argv += ["-b", backing, "-F", "qcow2" if backing.endswith(".qcow2") else "raw"]
    if preallocation and preallocation != "off":
        opts.append(f"preallocation={preallocation}")
    if opts:
        argv += ["-o", ",".join(opts)]
    argv.append(path)
    if not backing:
        argv.append(str(size))
    run(argv, timeout=_TIMEOUT)


def info(path: str, *, fmt: str | None = None) -> dict[str, Any]:
    argv = [QEMU_IMG, "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    data: dict[str, Any] = json.loads(out(argv + [path], timeout=_TIMEOUT))
    return data


def resize(path: str, *, fmt: str, size: int) -> None:
    run([QEMU_IMG, "resize", "-q", "-f", fmt, path, str(size)], timeout=_TIMEOUT)


def snapshot(path: str, *, op: str, snap: str) -> None:
    """op: -c create, -d delete, -a apply (rollback)."""
    run([QEMU_IMG, "snapshot", op, snap, path], timeout=_TIMEOUT)


def snapshots(path: str) -> list[str]:
    return [s["name"] for s in info(path, fmt="qcow2").get("snapshots", [])]


def convert(src: str, dst: str, *, src_fmt: str, dst_fmt: str, snap: str | None = None) -> None:
    argv = [QEMU_IMG, "convert", "-q", "-f", src_fmt, "-O", dst_fmt]
    if snap:
        argv += ["-l", f"snapshot.name={snap}"]
    run(argv + [src, dst], timeout=3600.0)
