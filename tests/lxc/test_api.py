"""Containers end to end: a real corrald (its own etcd, the real LXC driver and
dir storage) driven through the Proxmox API by proxmoxer, raw HTTP and corralsh.

The `local` storage gets its busybox template from `corral template build`,
as an operator would do it. Everything the module makes (containers, veths,
the bridge, the storage record) is removed even when a test fails.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from proxmoxer import ProxmoxAPI, ResourceException
from proxmoxer.tools import Tasks

from corral.cluster import bridges, keys
from corral.cluster.store import Store
from corral.lxc import cgroups
from tests.lxc.helpers import cleanup_lxcpath, layer, make_oci_layout
from tests.nodes import ct_node, node_store
from tests.util import VENV_BIN, ApiSession, Corrald, vmid_picker, wait_for

pytestmark = pytest.mark.timeout(240)
NODE = "node1"
SUBNET = "10.251.78"
ISO_ONLY = "crlisoonly"  # a storage that takes neither container roots nor templates


new_vmid = vmid_picker(70000, 79999)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corrald]:
    with ct_node(tmp_path_factory.mktemp("ctapi") / "node", node=NODE) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def store(node: Corrald) -> Iterator[Store]:
    """The daemon's own etcd, for what the API does not offer (yet) and for checks."""
    with node_store(node) as s:
        yield s


def corral(
    node: Corrald, tool: str, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    env = {**os.environ, "CORRAL_DATA_DIR": str(node.data_dir)}
    argv = [str(VENV_BIN / tool), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, f"{argv}: {proc.stdout}{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def template(node: Corrald) -> str:
    return node.build_template(timeout=120)


@pytest.fixture(scope="module")
def bridge() -> Iterator[str]:
    name = f"crllb{random.randint(1000, 9999)}"
    bridges.ensure_bridge(name, address=f"{SUBNET}.1/24")
    yield name
    bridges.delete_bridge(name)


@pytest.fixture(scope="module")
def api(node: Corrald) -> ApiSession:
    return node.session()


@pytest.fixture(scope="module")
def iso_storage(node: Corrald, store: Store) -> Iterator[str]:
    # Written as a record: POST /storage belongs to the storage API, not to this test.
    path = node.data_dir / "isoonly"
    conf = {"storage": ISO_ONLY, "type": "dir", "path": str(path), "content": "iso", "shared": 0}
    store.put(keys.storage(ISO_ONLY), conf)
    yield ISO_ONLY
    store.delete(keys.storage(ISO_ONLY))


def lxcpath(node: Corrald) -> str:
    return str(node.data_dir / "lxc")


def attach(node: Corrald, vmid: int, *argv: str) -> str:
    cmd = ["lxc-attach", "-P", lxcpath(node), "-n", str(vmid), "--clear-env", "--", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def lxc_info(node: Corrald, vmid: int) -> tuple[str, int]:
    """(state, init pid) straight from liblxc's tools."""
    out = subprocess.run(
        ["lxc-info", "-P", lxcpath(node), "-n", str(vmid), "-s", "-p"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout  # fmt: skip
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return fields.get("State", "").strip(), int(fields.get("PID", "0").strip() or 0)


def cg(pid: int, name: str) -> str:
    return cgroups.read(cgroups.file_for(pid, name))


def leftovers(node: Corrald, store: Store, vmid: int) -> list[str]:
    found = []
    if store.get(keys.guest(vmid)) is not None:
        found.append("record")
    if (node.data_dir / "local" / "images" / str(vmid)).exists():
        found.append("volume")
    if (node.data_dir / "lxc" / str(vmid)).exists():
        found.append("lxc dir")
    return found


def ct(vmid: int) -> str:
    return f"/nodes/{NODE}/lxc/{vmid}"


def status(api: ApiSession, vmid: int) -> dict[str, Any]:
    return dict(api.data("GET", f"{ct(vmid)}/status/current"))


# -- templates ------------------------------------------------------------------------


def test_template_build_busybox(node: Corrald, template: str) -> None:
    assert template == "local:vztmpl/busybox-corral_amd64.tar.gz"
    path = node.data_dir / "local" / "template" / "cache" / "busybox-corral_amd64.tar.gz"
    assert path.is_file() and path.stat().st_size > 100_000


def test_template_import_oci_and_run_it(
    node: Corrald, api: ApiSession, store: Store, template: str, tmp_path: Path, iso_storage: str
) -> None:
    base = (node.data_dir / "local/template/cache/busybox-corral_amd64.tar.gz").read_bytes()
    top = layer({"etc": None, "etc/oci-marker": b"from the top layer\n"}, True)
    src = make_oci_layout(tmp_path / "bbox", [base, top])
    argv = ["--data-dir", str(node.data_dir), "template", "import-oci", str(src)]
    out = corral(node, "corral", *argv).stdout.strip()
    assert out == "local:vztmpl/bbox-oci_amd64.tar.gz"

    vmid = new_vmid()
    api.run_task(
        "POST", f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": out, "rootfs": "local:1", "memory": 64, "start": 1},
    )  # fmt: skip
    try:
        assert attach(node, vmid, "/bin/cat", "/etc/oci-marker") == "from the top layer\n"
    finally:
        api.run_task("POST", f"{ct(vmid)}/status/stop")
        api.run_task("DELETE", ct(vmid), params={"purge": 1})
    assert leftovers(node, store, vmid) == []

    bad = corral(node, "corral", *argv, "--storage", iso_storage, check=False)
    assert bad.returncode == 1 and "content type 'vztmpl'" in bad.stderr
    bad = corral(node, "corral", *argv, "--name", "../x.tar.gz", check=False)
    assert bad.returncode == 2 and "name" in bad.stderr
    bad = corral(node, "corral", "--data-dir", str(node.data_dir), "template", "import-oci",
                 str(tmp_path / "missing"), check=False)  # fmt: skip
    assert bad.returncode == 2 and "not an OCI layout" in bad.stderr


@pytest.mark.skipif(
    os.environ.get("CORRAL_TEST_DEBOOTSTRAP") != "1",
    reason="debootstrap fetches ~150 MB from the Debian mirror and takes ~2 min: "
    "set CORRAL_TEST_DEBOOTSTRAP=1",
)
@pytest.mark.timeout(1200)
def test_template_build_debian_boots_systemd(node: Corrald, api: ApiSession, store: Store) -> None:
    argv = ["--data-dir", str(node.data_dir), "template", "build", "debian"]
    volid = corral(node, "corral", *argv, timeout=1100).stdout.strip()
    assert volid == "local:vztmpl/debian-bookworm-corral_amd64.tar.zst"
    vmid = new_vmid()
    api.run_task(
        "POST", f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": volid, "rootfs": "local:2", "memory": 256,
              "hostname": "debct", "start": 1},
        timeout=300,
    )  # fmt: skip
    try:
        assert api.data("GET", f"{ct(vmid)}/config")["ostype"] == "debian"

        def booted() -> str:
            proc = subprocess.run(
                ["lxc-attach", "-P", lxcpath(node), "-n", str(vmid), "--clear-env", "--",
                 "/bin/systemctl", "is-system-running"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            return proc.stdout.strip() if proc.stdout.strip() in ("running", "degraded") else ""

        wait_for(booted, 120, 1.0, "systemd to finish booting")
        assert attach(node, vmid, "/bin/hostname").strip() == "debct"
        assert attach(node, vmid, "/bin/cat", "/etc/debian_version").startswith("12")
        # systemd halts on SIGRTMIN+3 (lxc.signal.halt for ostype debian): no kill needed.
        api.run_task("POST", f"{ct(vmid)}/status/shutdown", data={"timeout": 60}, timeout=120)
        assert status(api, vmid)["status"] == "stopped"
    finally:
        if status(api, vmid)["status"] != "stopped":
            api.run_task("POST", f"{ct(vmid)}/status/stop")
        api.run_task("DELETE", ct(vmid), params={"purge": 1})
    assert leftovers(node, store, vmid) == []


# -- proxmoxer, unmodified -----------------------------------------------------------


def test_proxmoxer_create_start_status_stop_delete(
    node: Corrald, store: Store, template: str, bridge: str
) -> None:
    prox = ProxmoxAPI(
        "127.0.0.1", user="admin@pve", password=node.password, verify_ssl=False,
        port=node.port, timeout=60,
    )  # fmt: skip

    def ok(upid: str) -> None:
        st = Tasks.blocking_status(prox, upid, timeout=120, polling_interval=0.1)
        assert st is not None and st["exitstatus"] == "OK", st

    vmid = new_vmid()
    nodeapi = prox.nodes(NODE)
    ok(
        nodeapi.lxc.create(
            vmid=vmid,
            ostemplate=template,
            rootfs="local:1",
            hostname=f"crl{vmid}",
            memory=64,
            swap=0,
            net0=f"name=eth0,bridge={bridge},ip={SUBNET}.20/24",
        )  # fmt: skip
    )
    assert nodeapi.lxc(vmid).config.get()["hostname"] == f"crl{vmid}"
    ok(nodeapi.lxc(vmid).status.start.post())
    st = nodeapi.lxc(vmid).status.current.get()
    assert st["status"] == "running" and st["name"] == f"crl{vmid}"
    assert st["maxmem"] == 64 << 20 and st["pid"] == lxc_info(node, vmid)[1]
    assert bridges.link_exists(f"veth{vmid}i0")
    assert any(r["vmid"] == vmid for r in nodeapi.lxc.get())
    ok(nodeapi.lxc(vmid).status.stop.post())
    assert nodeapi.lxc(vmid).status.current.get()["status"] == "stopped"
    ok(nodeapi.lxc(vmid).delete(purge=1))
    with pytest.raises(ResourceException):
        nodeapi.lxc(vmid).config.get()
    assert leftovers(node, store, vmid) == []
    assert not bridges.link_exists(f"veth{vmid}i0")


# -- the whole life of a container through the API -----------------------------------


def test_limits_exec_freeze_config_shutdown_purge(
    node: Corrald, api: ApiSession, store: Store, template: str, bridge: str
) -> None:
    vmid = new_vmid()
    api.run_task(
        "POST", f"/nodes/{NODE}/lxc",
        data={
            "vmid": vmid, "ostemplate": template, "rootfs": "local:1", "hostname": "limits",
            "memory": 64, "swap": 32, "cores": 1, "cpulimit": 0.5, "pidslimit": 100,
            "net0": f"name=eth0,bridge={bridge},ip={SUBNET}.21/24", "start": 1,
        },
    )  # fmt: skip
    st = status(api, vmid)
    pid = st["pid"]
    assert st["status"] == "running" and pid == lxc_info(node, vmid)[1]

    # Inside: its hostname, its address; outside: its limits in its cgroups.
    assert attach(node, vmid, "/bin/hostname").strip() == "limits"
    assert f"inet {SUBNET}.21/24" in attach(node, vmid, "/sbin/ip", "-4", "addr", "show", "eth0")
    assert int(cg(pid, "memory.limit_in_bytes")) == 64 << 20
    assert int(cg(pid, "memory.memsw.limit_in_bytes")) == 96 << 20
    assert cg(pid, "cpu.cfs_quota_us") == "50000" and cg(pid, "cpu.cfs_period_us") == "100000"
    assert cg(pid, "cpuset.cpus") == "0"
    assert cg(pid, "pids.max") == "100"

    # Its network: it reaches the host over the test bridge; the API reports both.
    wait_for(
        lambda: subprocess.run(
            ["lxc-attach", "-P", lxcpath(node), "-n", str(vmid), "--", "/bin/ping", "-c", "1",
             "-W", "1", f"{SUBNET}.1"], capture_output=True, timeout=10,
        ).returncode == 0,
        30, 0.2, "the host to answer the container's ping",
    )  # fmt: skip
    ifaces = {i["name"]: i for i in api.data("GET", f"{ct(vmid)}/interfaces")}
    assert ifaces["eth0"]["inet"] == f"{SUBNET}.21/24"
    st = status(api, vmid)
    assert st["netin"] > 0 and st["netout"] > 0

    rows = api.data("GET", "/cluster/resources", params={"type": "vm"})
    row = next(r for r in rows if r["id"] == f"lxc/{vmid}")
    assert row["node"] == NODE and row["type"] == "lxc" and row["name"] == "limits"
    wait_for(
        lambda: next(
            r for r in api.data("GET", "/cluster/resources") if r.get("id") == f"lxc/{vmid}"
        )["status"] == "running",
        15, 0.2, "resources to show it running",
    )  # fmt: skip

    # Freeze and thaw.
    api.run_task("POST", f"{ct(vmid)}/status/suspend")
    st = status(api, vmid)
    assert st["status"] == "running" and st["frozen"] == 1  # Proxmox's enum: running|stopped
    assert lxc_info(node, vmid)[0] == "FROZEN" and cgroups.freezer_state(pid) == "FROZEN"
    api.run_task("POST", f"{ct(vmid)}/status/resume")
    assert "frozen" not in status(api, vmid) and lxc_info(node, vmid)[0] == "RUNNING"
    assert attach(node, vmid, "/bin/echo", "thawed").strip() == "thawed"

    # Config: digest guards the edit; memory goes live into the cgroup, hostname waits.
    config = api.data("GET", f"{ct(vmid)}/config")
    stale = api.put(f"{ct(vmid)}/config", data={"memory": 80, "digest": "0" * 40})
    assert stale.status_code == 409 and "modified" in stale.text
    r = api.put(f"{ct(vmid)}/config", data={"memory": 96, "digest": config["digest"]})
    assert r.status_code == 200, r.text
    assert int(cg(pid, "memory.limit_in_bytes")) == 96 << 20
    assert int(cg(pid, "memory.memsw.limit_in_bytes")) == 128 << 20
    r = api.put(f"{ct(vmid)}/config", data={"hostname": "renamed", "pidslimit": 200})
    assert r.status_code == 200, r.text
    assert cg(pid, "pids.max") == "200"
    current = api.data("GET", f"{ct(vmid)}/config", params={"current": 1})
    assert current["memory"] == 96 and current["hostname"] == "limits"
    pending = {p["key"]: p for p in api.data("GET", f"{ct(vmid)}/pending")}
    assert pending["hostname"]["pending"] == "renamed"
    assert status(api, vmid)["maxmem"] == 96 << 20

    # Clean shutdown (busybox powers off on SIGPWR), then the pending hostname applies.
    api.run_task("POST", f"{ct(vmid)}/status/shutdown", data={"timeout": 30})
    assert status(api, vmid)["status"] == "stopped" and lxc_info(node, vmid)[0] == "STOPPED"
    api.run_task("POST", f"{ct(vmid)}/status/start")
    assert attach(node, vmid, "/bin/hostname").strip() == "renamed"
    running = api.delete(ct(vmid))
    assert running.status_code == 409  # running: destroy refused
    api.run_task("POST", f"{ct(vmid)}/status/stop")
    api.run_task("DELETE", ct(vmid), params={"purge": 1})
    assert leftovers(node, store, vmid) == []
    assert not any(r.get("id") == f"lxc/{vmid}" for r in api.data("GET", "/cluster/resources"))


# -- bad input: a 400 naming the parameter, and nothing made ------------------------


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"bogus": "1"}, "bogus"),
        ({"net0": "name=eth0,bridge=crllbx,ip=10.1.2.3"}, "net0"),  # no prefix length
        ({"net0": "bridge=crllbx"}, "net0"),  # no name
        ({"memory": 8}, "memory"),
        ({"rootfs": f"{ISO_ONLY}:1"}, "rootfs"),
        ({"rootfs": "nosuchstorage:1"}, "rootfs"),
        ({"ostemplate": "local:iso/x.iso"}, "ostemplate"),
        ({"ostemplate": f"{ISO_ONLY}:vztmpl/x.tar.gz"}, "ostemplate"),
        ({"ostemplate": "nosuchstorage:vztmpl/x.tar.gz"}, "ostemplate"),
    ],
)
def test_bad_config_is_a_400_and_leaves_nothing(
    node: Corrald,
    api: ApiSession,
    store: Store,
    template: str,
    iso_storage: str,
    extra: dict[str, Any],
    key: str,
) -> None:
    vmid = new_vmid()
    params = {"vmid": vmid, "ostemplate": template, "rootfs": "local:1", **extra}
    r = api.post(f"/nodes/{NODE}/lxc", data=params)
    assert r.status_code == 400, r.text
    assert key in r.json()["errors"], r.text
    assert leftovers(node, store, vmid) == []


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        ("crlbroken.tar.gz", "ostemplate: cannot read archive"),
        (
            "crlmissing.tar.gz",
            "ostemplate: template 'local:vztmpl/crlmissing.tar.gz' does not exist",
        ),
    ],
)
def test_failed_create_task_leaves_nothing(
    node: Corrald, api: ApiSession, store: Store, archive: str, reason: str
) -> None:
    """What only the CT's own node can know fails the task: a template file that
    is missing there, or broken (found while unpacking)."""
    cache = node.data_dir / "local" / "template" / "cache"
    if archive == "crlbroken.tar.gz":
        (cache / archive).write_bytes(b"\x1f\x8bnot really gzip")
    vmid = new_vmid()
    upid = api.data(
        "POST", f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": f"local:vztmpl/{archive}", "rootfs": "local:1"},
    )  # fmt: skip
    exitstatus = api.wait_task(upid)["exitstatus"]
    assert exitstatus != "OK"
    log = "\n".join(line["t"] for line in api.data("GET", f"/nodes/{NODE}/tasks/{upid}/log"))
    assert reason in log or reason in exitstatus, log
    assert leftovers(node, store, vmid) == []
    (cache / archive).unlink(missing_ok=True)


# -- the daemon dies, the container does not ------------------------------------------


def test_container_outlives_a_killed_daemon(
    node: Corrald, store: Store, template: str, bridge: str
) -> None:
    api = node.session()
    vmid = new_vmid()
    api.run_task(
        "POST", f"/nodes/{NODE}/lxc",
        data={"vmid": vmid, "ostemplate": template, "rootfs": "local:1", "memory": 64,
              "net0": f"name=eth0,bridge={bridge},ip={SUBNET}.22/24", "start": 1},
    )  # fmt: skip
    pid = status(api, vmid)["pid"]

    node.stop(signal.SIGKILL)  # the daemon's whole process group, its etcd included
    assert lxc_info(node, vmid) == ("RUNNING", pid)
    os.kill(pid, 0)
    time.sleep(0.5)
    assert lxc_info(node, vmid) == ("RUNNING", pid)

    node.start()
    api = node.session()
    st = status(api, vmid)
    assert st["status"] == "running" and st["pid"] == pid
    wait_for(
        lambda: next(
            r for r in api.data("GET", "/cluster/resources") if r.get("id") == f"lxc/{vmid}"
        )["status"] == "running",
        15, 0.2, "resources to show it running again",
    )  # fmt: skip
    assert attach(node, vmid, "/bin/echo", "alive").strip() == "alive"
    api.run_task("POST", f"{ct(vmid)}/status/stop")
    api.run_task("DELETE", ct(vmid), params={"purge": 1})
    assert leftovers(node, store, vmid) == []


# -- restart migration between two nodes -------------------------------------------


def test_restart_migration_to_a_second_node(
    node: Corrald, store: Store, template: str, bridge: str, tmp_path: Path
) -> None:
    """node2 shares node1's etcd; the CT's root is on a dir storage marked shared.
    The source releases it (lxc dir gone, volume kept), node2 adopts and starts it."""
    shared = tmp_path / "shared"
    conf = {"storage": "crlshared", "type": "dir", "path": str(shared),
            "content": "rootdir", "shared": 1}  # fmt: skip
    store.put(keys.storage("crlshared"), conf)
    node2 = Corrald(
        tmp_path / "node2", node="node2", extra=["--etcd", f"http://127.0.0.1:{node.etcd_port}"]
    )
    # As `corral cluster join` does: node2's certificate comes from the cluster CA.
    (node2.data_dir / "ssl").mkdir(parents=True, mode=0o700)
    for name in ("ca.pem", "ca.key"):
        shutil.copy(node.data_dir / "ssl" / name, node2.data_dir / "ssl" / name)
    try:
        node2.start()
        api, api2 = node.session(), node2.session(password=node.password)
        vmid = new_vmid()
        api.run_task(
            "POST", f"/nodes/{NODE}/lxc",
            data={"vmid": vmid, "ostemplate": template, "rootfs": "crlshared:1", "memory": 64,
                  "hostname": "mover", "net0": f"name=eth0,bridge={bridge},ip={SUBNET}.23/24",
                  "start": 1},
        )  # fmt: skip
        attach(node, vmid, "/bin/sh", "-c", "echo made-on-node1 > /marker")
        api.run_task(
            "POST", f"{ct(vmid)}/migrate", data={"target": "node2", "restart": 1}, timeout=180
        )
        assert not (node.data_dir / "lxc" / str(vmid)).exists()
        assert lxc_info(node, vmid)[0] != "RUNNING"
        assert list((shared / "images" / str(vmid)).iterdir())  # the volume stayed
        assert lxc_info(node2, vmid)[0] == "RUNNING"
        assert attach(node2, vmid, "/bin/cat", "/marker") == "made-on-node1\n"
        assert attach(node2, vmid, "/bin/hostname").strip() == "mover"
        st = api2.data("GET", f"/nodes/node2/lxc/{vmid}/status/current")
        assert st["status"] == "running" and st["pid"] == lxc_info(node2, vmid)[1]
        # Asked through node1, the node-local read is forwarded to node2.
        assert api.data("GET", f"/nodes/node2/lxc/{vmid}/status/current")["pid"] == st["pid"]
        row = next(r for r in api.data("GET", "/cluster/resources") if r.get("id") == f"lxc/{vmid}")
        assert row["node"] == "node2"
        api2.run_task("POST", f"/nodes/node2/lxc/{vmid}/status/stop")
        api2.run_task("DELETE", f"/nodes/node2/lxc/{vmid}", params={"purge": 1})
        assert not (shared / "images" / str(vmid)).exists()
        assert not (node2.data_dir / "lxc" / str(vmid)).exists()
        assert store.get(keys.guest(vmid)) is None
    finally:
        node2.stop()
        cleanup_lxcpath(str(node2.data_dir / "lxc"))
        store.delete(keys.storage("crlshared"))


# -- corralsh ----------------------------------------------------------------------------


def test_corralsh_create_start_status(node: Corrald, store: Store, template: str) -> None:
    vmid = new_vmid()
    path = f"/nodes/{NODE}/lxc"
    corral(node, "corralsh", "create", path, "--vmid", str(vmid), "--ostemplate", template,
           "--rootfs", "local:1", "--hostname", "fromsh", "--memory", "64")  # fmt: skip
    corral(node, "corralsh", "create", f"{path}/{vmid}/status/start")
    out = corral(node, "corralsh", "get", f"{path}/{vmid}/status/current", "--output-format",
                 "json").stdout  # fmt: skip
    import json

    st = json.loads(out)
    assert st["status"] == "running" and st["name"] == "fromsh"
    assert st["pid"] == lxc_info(node, vmid)[1]
    bad = corral(node, "corralsh", "create", path, "--vmid", str(new_vmid()), "--ostemplate",
                 template, "--memory", "1", check=False)  # fmt: skip
    assert bad.returncode == 2 and "memory:" in bad.stderr
    corral(node, "corralsh", "create", f"{path}/{vmid}/status/stop")
    corral(node, "corralsh", "delete", f"{path}/{vmid}", "--purge", "1")
    assert leftovers(node, store, vmid) == []
