"""A container's root password and SSH keys at creation (Proxmox's `password` and
`ssh-public-keys`), against a real corrald: written into the new root, owned by
the container's (mapped) root."""

from __future__ import annotations

import os
import random
import stat

import pytest

from corral.lxc import credentials
from corral.lxc.render import IDMAP_BASE
from tests.clients.conftest import NODE
from tests.util import Corrald

pytestmark = pytest.mark.timeout(240)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH3dVd1oWcSxHQ3Q0a2yN9Qm3wz6qk8B0p8c4e3Z0ZB0 t@corral"


def test_password_and_keys_land_in_the_new_root(node: Corrald, template: str) -> None:
    api = node.session()
    vmid = random.randint(64000, 64999)
    api.run_task(
        "POST",
        f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": template, "rootfs": "local:1", "memory": 64,
              "unprivileged": 1, "password": "s3cret-pw", "ssh-public-keys": KEY + "\n"},
    )  # fmt: skip
    try:
        base = node.data_dir / "local" / "images" / str(vmid)
        (root,) = [p for p in base.iterdir() if p.name.startswith(f"subvol-{vmid}-disk-")]
        shadow = (root / "etc" / "shadow").read_text()
        hashed = next(line for line in shadow.splitlines() if line.startswith("root:")).split(":")[
            1
        ]
        assert hashed.startswith("$6$") and credentials.crypt.crypt("s3cret-pw", hashed) == hashed
        keys = root / "root" / ".ssh" / "authorized_keys"
        assert keys.read_text().splitlines() == [KEY]
        st = os.stat(keys)
        assert st.st_uid == IDMAP_BASE and stat.S_IMODE(st.st_mode) == 0o600
        assert os.stat(keys.parent).st_uid == IDMAP_BASE
        # Neither is kept in the guest's config.
        config = api.data("GET", f"/nodes/{NODE}/lxc/{vmid}/config")
        assert "password" not in config and "ssh-public-keys" not in config
    finally:
        api.run_task("DELETE", f"/nodes/{NODE}/lxc/{vmid}")
