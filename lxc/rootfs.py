"""What the driver does inside a container's root filesystem from the host.

Files are written at start (hostname, resolv.conf, the list of DHCP
interfaces for the template's init). The rootfs belongs to the guest, so a
path in it may be a symlink pointing anywhere on the host: every write
resolves its parent inside the root and refuses to follow a final symlink.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from corral.lxc import config as cfg
from corral.lxc import unpack
from corral.lxc.render import IDMAP_BASE

LogFn = Callable[[str], None]


def unpack_template(archive: str, root: str, *, unprivileged: bool, log: LogFn) -> int:
    os.makedirs(root, exist_ok=True)
    shift = IDMAP_BASE if unprivileged else 0
    count = unpack.extract(archive, root, id_shift=shift, allow_devices=not unprivileged, log=log)
    if unprivileged:
        os.chown(root, shift, shift)
    return count


def detect_ostype(root: str) -> str:
    # /etc/os-release is usually a symlink to ../usr/lib/os-release, which the
    # no-symlink read refuses: read the target's standard place too (os-release(5)).
    text = _read_inside(root, "etc/os-release") or _read_inside(root, "usr/lib/os-release") or ""
    match = re.search(r"^ID=\"?([a-z]+)", text, re.M)
    found = match.group(1) if match else ""
    return found if found in cfg.OSTYPES else "unmanaged"


def _inside_path(root: str, rel: str) -> str | None:
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.join(real_root, os.path.dirname(rel)))
    if os.path.commonpath([real_root, parent]) != real_root:
        return None
    return os.path.join(parent, os.path.basename(rel))


def _read_inside(root: str, rel: str) -> str | None:
    path = _inside_path(root, rel)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        return fh.read(65536)


def write_inside(root: str, rel: str, text: str, *, uid: int = 0) -> bool:
    """Write `root/rel` without following symlinks out of the root; False if refused."""
    path = _inside_path(root, rel)
    if path is None or not os.path.isdir(os.path.dirname(path)):
        return False
    if os.path.islink(path):
        os.unlink(path)  # the guest's own symlink: replace it, never write through it
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chown(path, uid, uid)
    return True


def write_identity(root: str, config: dict[str, Any], *, unprivileged: bool) -> None:
    """Hostname, DNS and DHCP interface list, as Proxmox writes them at start."""
    uid = IDMAP_BASE if unprivileged else 0
    if cfg.value(config, "ostype") == "unmanaged" and not os.path.exists(
        os.path.join(root, "etc/corral")
    ):
        return
    hostname = str(config.get("hostname") or "")
    if hostname:
        write_inside(root, "etc/hostname", hostname.split(".")[0] + "\n", uid=uid)
        hosts = _read_inside(root, "etc/hosts") or "127.0.0.1 localhost\n"
        lines = [ln for ln in hosts.splitlines() if not ln.startswith("127.0.1.1")]
        lines.append(f"127.0.1.1 {hostname} {hostname.split('.')[0]}")
        write_inside(root, "etc/hosts", "\n".join(lines) + "\n", uid=uid)
    if config.get("nameserver") or config.get("searchdomain"):
        out = []
        if config.get("searchdomain"):
            out.append("search " + " ".join(re.split(r"[,; ]+", config["searchdomain"].strip())))
        for ns in re.split(r"[,; ]+", str(config.get("nameserver") or "").strip()):
            if ns:
                out.append(f"nameserver {ns}")
        write_inside(root, "etc/resolv.conf", "\n".join(out) + "\n", uid=uid)
    if os.path.isdir(os.path.join(root, "etc/corral")):
        dhcp = [n["name"] for n in cfg.parse_net(config).values() if n.get("ip") == "dhcp"]
        write_inside(root, "etc/corral/dhcp", "".join(f"{n}\n" for n in dhcp), uid=uid)
