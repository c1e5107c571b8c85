"""ansible/site.yml deploys a real three-node cluster (issue 10 item 8).

Opt-in (CORRAL_TEST_DEPLOY=1): it makes three LXC system containers with their
own network namespaces on a test bridge, each a pristine Debian 12 reached over
ssh, and the playbook installs corral's Debian packages in each (apt from the
mirror this machine uses, through NAT on the test bridge): 10-20 minutes. Then
it checks the three nodes form one quorate cluster, and runs the playbook again
(an upgrade in place: corrald is restarted on the new code, the cluster stays).
Everything is removed afterwards: containers, bridge, NAT table, ip_forward.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import bridges
from tests.util import VENV_BIN, ApiSession, wait_for

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("CORRAL_TEST_DEPLOY") != "1",
        reason="installs corral's Debian packages in three containers (10-20 min): "
        "set CORRAL_TEST_DEPLOY=1",
    ),
    pytest.mark.timeout(3600),
]

REPO = Path(__file__).resolve().parents[2]
LXCPATH = "/var/tmp/crl-deploy"
BRIDGE = "crlops0"
NET = "10.250.97"
NODES = ("crldep1", "crldep2", "crldep3")
NFT_TABLE = "crlops_deploy"
ROOTFS_TAR = "/var/tmp/fresh-rootfs-v2.tar"  # fresh-debian.sh's pristine bookworm, if made


def sh(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{argv}: {proc.stdout}\n{proc.stderr}"
    return proc


def attach(name: str, script: str, timeout: float = 900) -> str:
    return sh(
        ["lxc-attach", "-P", LXCPATH, "-n", name, "--clear-env",
         "-v", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
         "-v", "HOME=/root", "--", "bash", "-c", script],
        timeout=timeout,
    ).stdout  # fmt: skip


def _rootfs_tar(cache: Path) -> str:
    if os.path.exists(ROOTFS_TAR):
        return ROOTFS_TAR
    tar = cache / "bookworm.tar"
    if not tar.exists():
        mirror = "http://deb.debian.org/debian"
        for line in Path("/etc/apt/sources.list.d/debian.sources").read_text().splitlines():
            if line.startswith("URIs:"):
                mirror = line.split()[1]
                break
        root = cache / "rootfs"
        sh(["debootstrap", "--variant=minbase", "--include=ca-certificates,tini,iproute2,procps",
            "bookworm", str(root), mirror], timeout=1800)  # fmt: skip
        sh(["tar", "-C", str(root), "-cf", str(tar), "."])
        shutil.rmtree(root)
    return str(tar)


def _config(index: int, name: str) -> str:
    return f"""lxc.uts.name = {name}
lxc.rootfs.path = dir:{LXCPATH}/{name}/rootfs
lxc.net.0.type = veth
lxc.net.0.link = {BRIDGE}
lxc.net.0.flags = up
lxc.net.0.name = eth0
lxc.net.0.hwaddr = 02:cc:97:00:00:{index:02x}
lxc.net.0.ipv4.address = {NET}.{10 + index}/24
lxc.net.0.ipv4.gateway = {NET}.1
lxc.init.cmd = /usr/bin/tini -s -- /bin/sleep infinity
lxc.apparmor.profile = unconfined
lxc.mount.auto = proc:rw sys:rw
lxc.mount.entry = /sys/fs/cgroup sys/fs/cgroup none rbind,create=dir 0 0
lxc.cgroup.devices.allow = a
lxc.cap.drop =
lxc.autodev = 1
lxc.pty.max = 64
lxc.tty.max = 2
lxc.mount.entry = /dev/net/tun dev/net/tun none bind,optional,create=file 0 0
"""


def _teardown(saved_forward: str) -> None:
    for name in NODES:
        subprocess.run(["lxc-stop", "-P", LXCPATH, "-n", name, "-k"],
                       capture_output=True, timeout=120, check=False)  # fmt: skip
    shutil.rmtree(LXCPATH, ignore_errors=True)
    subprocess.run(["nft", "delete", "table", "ip", NFT_TABLE], capture_output=True, check=False)
    Path("/proc/sys/net/ipv4/ip_forward").write_text(saved_forward)
    bridges.delete_bridge(BRIDGE)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Three pristine Debian hosts with sshd; yields the ssh key's path."""
    work = tmp_path_factory.mktemp("deploy")
    tar = _rootfs_tar(work)
    saved_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    try:
        bridges.ensure_bridge(BRIDGE, address=f"{NET}.1/24")
        # The hosts fetch packages as this machine does: NAT out of the test bridge only.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        rules = (
            f"table ip {NFT_TABLE} {{ chain post {{ type nat hook postrouting priority 100; "
            f'ip saddr {NET}.0/24 oifname != "{BRIDGE}" masquerade; }}; }}'
        )
        sh(["nft", rules])
        key = work / "id_ed25519"
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        for index, name in enumerate(NODES, start=1):
            rootfs = Path(LXCPATH, name, "rootfs")
            rootfs.mkdir(parents=True)
            sh(["tar", "-C", str(rootfs), "-xf", tar])
            shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
            shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/")
            Path(LXCPATH, name, "config").write_text(_config(index, name))
            sh(["lxc-start", "-P", LXCPATH, "-n", name])
            sh(["lxc-wait", "-P", LXCPATH, "-n", name, "-s", "RUNNING", "-t", "30"])
        pub = (work / "id_ed25519.pub").read_text().strip()
        procs = [
            subprocess.Popen(
                [
                    "lxc-attach",
                    "-P",
                    LXCPATH,
                    "-n",
                    name,
                    "--clear-env",
                    "-v",
                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                    "--",
                    "bash",
                    "-c",
                    "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && "
                    "apt-get install -y -q --no-install-recommends openssh-server python3 "
                    f"&& mkdir -p /run/sshd /root/.ssh && echo '{pub}' > /root/.ssh/authorized_keys"
                    " && /usr/sbin/sshd",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for name in NODES
        ]
        for proc in procs:
            out, _ = proc.communicate(timeout=900)
            assert proc.returncode == 0, out
        yield key
    finally:
        _teardown(saved_forward)


def playbook(key: Path, work: Path) -> subprocess.CompletedProcess[str]:
    inventory = work / "inventory.ini"
    lines = ["[corral]"]
    lines += [f"{n} ansible_host={NET}.{10 + i}" for i, n in enumerate(NODES, start=1)]
    lines += [
        "[corral:vars]",
        "ansible_user=root",
        f"ansible_ssh_private_key_file={key}",
        "ansible_ssh_common_args='-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
        "ansible_python_interpreter=/usr/bin/python3",
        "corral_cluster_name=crltest",
        f"corral_tarball={work}/corral.tar.gz",
    ]
    inventory.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(REPO / "ansible/site.yml")],
        capture_output=True, text=True, timeout=3000, env=env, cwd=work, check=False,
    )  # fmt: skip
    (work / f"playbook-{int(time.time())}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc


def _session(index: int) -> ApiSession:
    root = Path(LXCPATH, NODES[0], "rootfs/var/lib/corral")
    password = (root / "initial-admin-password").read_text().strip()
    ca = str(root / "ssl/ca.pem")
    return ApiSession(f"https://{NET}.{10 + index}:8006", ca).login("admin@pve", password)


def _online(index: int) -> list[str]:
    status = _session(index).data("GET", "/cluster/status")
    assert status[0]["quorate"] == 1
    return sorted(n["name"] for n in status[1:] if n["online"])


def test_playbook_brings_up_a_cluster_and_upgrades_it(
    hosts: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    work = tmp_path_factory.mktemp("play")
    playbook(hosts, work)
    for index in (1, 2, 3):  # every node answers for the whole cluster
        assert _online(index) == list(NODES)
    first_pid = attach(NODES[0], "cat /var/lib/corral/corrald.pid").strip()

    playbook(hosts, work)  # again: an upgrade in place, nobody re-joins
    assert attach(NODES[0], "cat /var/lib/corral/corrald.pid").strip() != first_pid
    wait_for(lambda: _online(3) == list(NODES), 60, 1, "all three nodes online again")
