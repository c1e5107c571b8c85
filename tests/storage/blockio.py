"""Read and write guest-visible bytes of a volume the way QEMU sees it (qemu-io).

The volume is opened from what `qemu_disk` returns, so these helpers also
check that a backend hands QEMU something it can really open.
"""

from __future__ import annotations

import subprocess
from typing import Any

from corral.storage.volumes import Volumes

CHUNK = 64 * 1024


def _target(disk: dict[str, Any]) -> list[str]:
    if disk["kind"] == "file":
        return ["-f", disk["format"], disk["path"]]
    if disk["kind"] == "rbd":
        opts = [
            "driver=raw",
            "file.driver=rbd",
            f"file.pool={disk['pool']}",
            f"file.image={disk['image']}",
            f"file.conf={disk['conf']}",
            f"file.user={disk['user']}",
        ]
        if disk.get("namespace"):
            opts.append(f"file.namespace={disk['namespace']}")
        return ["--image-opts", ",".join(opts)]
    raise AssertionError(f"unknown disk kind {disk['kind']}")


def _io(disk: dict[str, Any], command: str, *, readonly: bool = False) -> str:
    target = _target(disk)
    proc = subprocess.run(
        ["qemu-io", *(["-r"] if readonly else []), *target[:-1], "-c", command, target[-1]],
        capture_output=True,
        timeout=60,
        check=False,
    )
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    if "Pattern verification failed" in text:
        return text
    assert proc.returncode == 0, f"qemu-io {command}: {text}"
    return text


def write(vols: Volumes, volid: str, pattern: int, offset: int = 0, length: int = CHUNK) -> None:
    _io(vols.qemu_disk(volid), f"write -P {pattern} {offset} {length}")


def holds(vols: Volumes, volid: str, pattern: int, offset: int = 0, length: int = CHUNK) -> bool:
    text = _io(vols.qemu_disk(volid), f"read -P {pattern} {offset} {length}", readonly=True)
    return "Pattern verification failed" not in text
