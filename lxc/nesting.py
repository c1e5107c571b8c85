"""What a host that is itself a container cannot give its containers.

An unprivileged container mounts a fresh proc inside its user namespace. The
kernel allows that only where the namespace's /proc is "fully visible": no
other mount hides part of it. A system container's /proc usually has such
mounts (LXC binds /proc/sys/kernel/random/boot_id, lxcfs binds /proc/meminfo
and friends), so every unprivileged container started inside it fails with
"Failed to mount proc". The probe below asks the kernel exactly that question
once (an unprivileged user+pid+mount namespace mounting proc), so corral can
say why before liblxc fails with a riddle in its log.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

PROBE_TIMEOUT = 10.0


def host_container() -> str | None:
    """The kind of container this host runs in ("lxc", "docker", ...), or None."""
    try:
        with open("/proc/1/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(b"container="):
                    return item.split(b"=", 1)[1].decode(errors="replace") or "container"
    except OSError:
        pass
    for path, kind in (("/run/systemd/container", None), ("/.dockerenv", "docker"),
                       ("/run/.containerenv", "podman")):  # fmt: skip
        if os.path.exists(path):
            if kind is None:
                try:
                    with open(path) as fh:
                        return fh.read().strip() or "container"
                except OSError:
                    return "container"
            return kind
    return None


def proc_overmounts(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points below /proc: what makes /proc not fully visible."""
    try:
        with open(mountinfo) as fh:
            points = [line.split()[4] for line in fh if len(line.split()) > 4]
    except OSError:
        return []
    return [p for p in points if p.startswith("/proc/")]


@functools.cache
def unprivileged_problem() -> str | None:
    """Why unprivileged containers cannot start on this host, or None if they can
    (or the probe cannot tell: no unshare tool)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    argv = [unshare, "--user", "--map-root-user", "--mount", "--pid", "--fork",
            "--mount-proc", "true"]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode == 0:
        return None
    err = proc.stderr.decode(errors="replace").strip().splitlines()
    detail = err[-1] if err else f"exit status {proc.returncode}"
    kind = host_container()
    where = f"this host is itself a container ({kind})" if kind else "this host"
    hidden = proc_overmounts()
    because = (
        f" whose /proc has mounts over parts of it ({', '.join(hidden[:3])})" if hidden else ""
    )
    return (
        "unprivileged containers need to mount a fresh proc inside a user namespace, and "
        f"{where}{because}, so the kernel refuses it ({detail}): create the container "
        "with unprivileged=0, or run corral on a host (or a container with a fully "
        "visible /proc)"
    )
