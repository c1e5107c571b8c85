"""Ansible's Proxmox modules, unmodified, against a real corrald.

ansible-playbook (pip `ansible-core`, with the community.general and
community.proxmox collections the pip `ansible` package bundles) runs
tests/clients/ansible/guests.yml: a container through
community.general.proxmox (redirected to community.proxmox.proxmox) and a
TCG VM through community.proxmox.proxmox_kvm, each created, started, read
with proxmox_vm_info, stopped and deleted. Options Proxmox defines that have no
effect in corral (the VM's `keyboard`, `shares`) are accepted and named in the
create task's log.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import bridges
from corral.lxc import nesting
from tests.util import VENV_BIN, Corrald

pytestmark = pytest.mark.timeout(600)
NODE = "node1"
PLAYBOOK = Path(__file__).parent / "ansible" / "guests.yml"


@pytest.fixture(scope="module")
def node(vm_node: Corrald) -> Corrald:
    return vm_node


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    name = f"crlans{random.randint(100, 999)}"
    bridges.ensure_bridge(name)
    yield name
    bridges.delete_bridge(name)


def test_proxmox_modules_create_start_read_stop_delete(
    node: Corrald, template: str, bridge: str
) -> None:
    ct, vm = random.sample(range(62000, 62999), 2)
    env = {
        **os.environ,
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_NOCOLOR": "1",
        # Only the collections the pinned `ansible` package bundles, none from the host.
        "ANSIBLE_COLLECTIONS_PATH": str(node.data_dir / "no-collections"),
        "ANSIBLE_LOCAL_TEMP": str(node.data_dir / "ansible-tmp"),
        "ANSIBLE_HOME": str(node.data_dir / "ansible-home"),
    }
    extra = {
        "ansible_python_interpreter": str(VENV_BIN / "python"),
        "corral_port": node.port,
        "corral_password": node.password,
        "corral_node": NODE,
        "ct_vmid": ct,
        "vm_vmid": vm,
        "ct_template": template,
        # Ansible's default (unprivileged) except on a host that is itself a container
        # which forbids it (lxc/nesting.py): there corral refuses it, as it should.
        "ct_unprivileged": not (nesting.host_container() and nesting.unprivileged_problem()),
        "vm_bridge": bridge,
    }
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(PLAYBOOK)]
    for key, value in extra.items():
        argv += ["-e", f"{key}={value}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=540, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "failed=0" in proc.stdout
    api = node.session()
    tasks = api.data("GET", f"/nodes/{NODE}/tasks", params={"limit": 200})
    (create,) = [t for t in tasks if t["type"] == "qmcreate" and t["id"] == str(vm)]
    log = api.data("GET", f"/nodes/{NODE}/tasks/{create['upid']}/log", params={"limit": 0})
    notes = [line["t"] for line in log if line["t"].startswith("note: parameter")]
    assert any("keyboard=en-us" in n for n in notes), log
    assert any("shares=1000" in n for n in notes), log
    # Both guests are gone, as the playbook's last steps asked.
    left = {r["vmid"] for r in api.data("GET", "/cluster/resources", params={"type": "vm"})}
    assert not {ct, vm} & left
