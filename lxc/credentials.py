"""Root's password and SSH keys inside a new container (Proxmox's `password` and
`ssh-public-keys` at creation).

Both are written into the unpacked root before the container first starts:
root's hash in /etc/shadow (SHA-512 crypt, as Debian's passwd writes it) and
the keys in /root/.ssh/authorized_keys, owned by the container's root (the
mapped uid for unprivileged containers). Nothing is followed out of the root.
"""

from __future__ import annotations

import os
import warnings

from corral.cluster.errors import ParamError
from corral.lxc.rootfs import _inside_path, _read_inside, write_inside

with warnings.catch_warnings():
    # crypt is the standard library's only SHA-512 crypt; corral runs on Python 3.11.
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


def set_root_password(root: str, password: str, *, uid: int) -> None:
    """Replace root's password hash in the container's /etc/shadow."""
    if len(password) < 5:
        raise ParamError.one("password", "password must be at least 5 characters long")
    shadow = _read_inside(root, "etc/shadow")
    if shadow is None:
        raise ParamError.one("password", "the template has no /etc/shadow to set a password in")
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    lines = shadow.splitlines()
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 1:
            fields[1] = hashed
            lines[i] = ":".join(fields)
            break
    else:
        raise ParamError.one("password", "the template's /etc/shadow has no root entry")
    _write(root, "etc/shadow", "\n".join(lines) + "\n", uid=uid, mode=0o640)


def add_root_keys(root: str, keys: str, *, uid: int) -> None:
    """Append the OpenSSH public keys (one per line) to root's authorized_keys."""
    wanted = [k.strip() for k in keys.splitlines() if k.strip()]
    for key in wanted:
        if not key.split()[0].startswith(("ssh-", "ecdsa-", "sk-")):
            raise ParamError.one("ssh-public-keys", f"not an OpenSSH public key: '{key[:40]}'")
    ssh_dir = _inside_path(root, "root/.ssh")
    if ssh_dir is None or not os.path.isdir(os.path.dirname(ssh_dir)):
        raise ParamError.one("ssh-public-keys", "the template has no /root directory")
    if not os.path.isdir(ssh_dir):
        if os.path.islink(ssh_dir):
            os.unlink(ssh_dir)
        os.mkdir(ssh_dir, 0o700)
        os.chown(ssh_dir, uid, uid)
    present = (_read_inside(root, "root/.ssh/authorized_keys") or "").splitlines()
    merged = present + [k for k in wanted if k not in present]
    _write(root, "root/.ssh/authorized_keys", "\n".join(merged) + "\n", uid=uid, mode=0o600)


def _write(root: str, rel: str, text: str, *, uid: int, mode: int) -> None:
    if not write_inside(root, rel, text, uid=uid):
        raise ParamError.one("rootfs", f"cannot write /{rel} in the container")
    path = _inside_path(root, rel)
    assert path is not None
    os.chmod(path, mode)
