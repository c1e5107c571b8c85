"""pvesh habits in corralsh, against a real corrald, as a user types them."""

from __future__ import annotations

import os
import random
import re
import subprocess

import pytest

from tests.clients.conftest import NODE
from tests.util import VENV_BIN, Corrald

pytestmark = pytest.mark.timeout(240)
UPID = re.compile(r"UPID:[^:\s]+:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:\w+:[^:\s]*:[^:\s]+:")


def sh(node: Corrald, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(VENV_BIN / "corralsh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CORRAL_DATA_DIR": str(node.data_dir)},
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_directory_indexes_for_every_inner_path(node: Corrald) -> None:
    assert {"version", "cluster", "nodes", "storage", "access"} <= set(
        sh(node, "ls", "/").stdout.split()
    )
    assert {"resources", "status", "nextid", "config"} <= set(
        sh(node, "ls", "/cluster").stdout.split()
    )
    assert {"users", "ticket", "acl"} <= set(sh(node, "ls", "/access").stdout.split())
    assert {"nodes", "join"} <= set(sh(node, "ls", "/cluster/config").stdout.split())
    # Over HTTP too, with Proxmox's shape.
    api = node.session()
    assert {"subdir": "nodes"} in api.data("GET", "/")
    assert {"subdir": "users"} in api.data("GET", "/access")


def test_border_header_and_human_readable_are_corralsh_options(node: Corrald) -> None:
    plain = sh(node, "get", "/nodes", "--noborder", "--noheader").stdout
    assert "+" not in plain and "|" not in plain
    assert plain.splitlines()[0].startswith(NODE)
    framed = sh(node, "get", "/nodes", "--noborder", "0").stdout
    assert framed.startswith("+") and "| node" in framed
    human = sh(node, "get", "/nodes", "--human-readable").stdout
    assert re.search(r"\d+\.\d\d (GiB|MiB)", human), human
    raw = sh(node, "get", "/nodes", "--human-readable", "0").stdout
    assert "GiB" not in raw and "MiB" not in raw
    bad = sh(node, "get", "/nodes", "--noborder", "maybe", check=False)
    assert bad.returncode != 0 and "boolean" in bad.stderr


def test_create_prints_the_upid_and_usage_lists_every_parameter(
    node: Corrald, template: str
) -> None:
    vmid = str(random.randint(63000, 63999))
    out = sh(node, "create", f"/nodes/{NODE}/lxc", "--vmid", vmid, "--ostemplate", template,
             "--rootfs", "local:1", "--memory", "64")  # fmt: skip
    assert UPID.fullmatch(out.stdout.strip()), out.stdout
    assert f":vzcreate:{vmid}:" in out.stdout
    gone = sh(node, "delete", f"/nodes/{NODE}/lxc/{vmid}")
    assert UPID.fullmatch(gone.stdout.strip()), gone.stdout
    usage = sh(node, "usage", f"/nodes/{NODE}/lxc").stdout
    create = next(line for line in usage.splitlines() if "corralsh create" in line)
    for flag in ("--vmid", "--ostemplate", "--rootfs", "--memory", "--net0", "--hostname",
                 "--unprivileged", "--force", "--start"):  # fmt: skip
        assert f"{flag} <" in create, flag
    qemu = sh(node, "usage", "/nodes/{node}/qemu", "--verbose").stdout
    assert "--scsi0 <string>" in qemu and "--kvm <boolean>" in qemu
