"""Real busybox containers through the driver (root, liblxc 5.0, hybrid cgroups)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.cluster import bridges
from corral.cluster.errors import CommandFailed, Conflict, ParamError, Unavailable
from corral.lxc import cgroups, nesting, status
from corral.lxc import config as cfg
from corral.lxc.driver import LxcDriver
from corral.storage.volumes import Volumes
from tests.lxc.helpers import (
    NO_CT_STORAGE,
    STORAGE,
    add_template,
    cleanup_lxcpath,
    dir_volumes,
    owned,
)

pytestmark = pytest.mark.timeout(240)

# Only where the host truly is a container whose /proc forbids it (issue 17 item 2):
# everywhere else the unprivileged tests run.
NESTED_LIMIT = nesting.unprivileged_problem() if nesting.host_container() else None
needs_unprivileged = pytest.mark.skipif(NESTED_LIMIT is not None, reason=str(NESTED_LIMIT))


def _noop(_msg: str) -> None:
    return None


def _create(drv: LxcDriver, vols: Volumes, vmid: int, **extra: object) -> dict:
    template = f"{STORAGE}:vztmpl/busybox-corral_amd64.tar.gz"
    config = {"hostname": f"crl{vmid}", "memory": 64, "swap": 32, "rootfs": f"{STORAGE}:1", **extra}
    return drv.create(vmid, config, volumes=vols, log=_noop, params={"ostemplate": template})


def _cg(pid: int, name: str) -> str:
    return cgroups.read(cgroups.file_for(pid, name))


def _until(check, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_lifecycle(driver: LxcDriver, volumes: Volumes, vmid: int) -> None:
    config = _create(driver, volumes, vmid, cores=1, cpulimit=0.5, pidslimit=64)
    assert config["rootfs"].startswith(f"{STORAGE}:{vmid}/subvol-{vmid}-disk-0.subvol,size=1G")
    assert config["ostype"] == "unmanaged" and config["arch"] == "amd64"
    assert driver.status(vmid, config)["status"] == "stopped"

    driver.start(vmid, config, volumes=volumes, log=_noop)
    st = driver.status(vmid, config)
    assert st["status"] == "running" and st["pid"] > 0
    assert st["maxmem"] == 64 << 20 and st["maxdisk"] == 1 << 30
    assert driver.running() >= {vmid}
    assert driver.attach(vmid, ["/bin/hostname"]).strip() == f"crl{vmid}"

    pid = st["pid"]
    assert st["mem"] > 0
    assert int(_cg(pid, "memory.limit_in_bytes")) == 64 << 20
    assert int(_cg(pid, "memory.memsw.limit_in_bytes")) == 96 << 20
    assert _cg(pid, "cpu.cfs_quota_us") == "50000"
    assert _cg(pid, "cpuset.cpus") == "0"
    assert _cg(pid, "pids.max") == "64"

    new = {**config, "memory": 128, "swap": 0, "cpulimit": 1, "description": "live"}
    del new["pidslimit"]
    applied = driver.apply_live(vmid, config, new, volumes=volumes, log=_noop)
    assert applied == {"memory", "swap", "cpulimit", "description", "pidslimit"}
    assert _cg(pid, "pids.max") == "max"
    assert int(_cg(pid, "memory.limit_in_bytes")) == 128 << 20
    assert int(_cg(pid, "memory.memsw.limit_in_bytes")) == 128 << 20
    assert _cg(pid, "cpu.cfs_quota_us") == "100000"
    shrink = {**new, "memory": 48, "swap": 16}
    driver.apply_live(vmid, new, shrink, volumes=volumes, log=_noop)
    assert int(_cg(pid, "memory.limit_in_bytes")) == 48 << 20
    assert int(_cg(pid, "memory.memsw.limit_in_bytes")) == 64 << 20
    pending = driver.apply_live(
        vmid, shrink, {**shrink, "hostname": "other"}, volumes=volumes, log=_noop
    )
    assert pending == set()
    config = shrink

    # The node's round measures all CTs in one pass and says what status() says.
    one = driver.status_many([(vmid, config)])[vmid]
    assert one["status"] == "running" and one["pid"] == pid and one["mem"] > 0
    assert one.keys() == driver.status(vmid, config).keys()

    driver.suspend(vmid, config, log=_noop)
    st = driver.status(vmid, config)
    assert st["status"] == "running" and st["frozen"] == 1
    assert driver.status_many([(vmid, config)])[vmid]["frozen"] == 1
    assert cgroups.freezer_state(pid) == "FROZEN"
    driver.resume(vmid, config, log=_noop)
    assert "frozen" not in driver.status(vmid, config)
    assert "frozen" not in driver.status_many([(vmid, config)])[vmid]
    assert driver.attach(vmid, ["/bin/echo", "thawed"]).strip() == "thawed"

    # Clean shutdown: busybox init powers off on SIGPWR, no kill needed.
    driver.shutdown(vmid, config, timeout=30, force_stop=False, log=_noop)
    assert driver.status(vmid, config)["status"] == "stopped"
    assert vmid not in driver.running()

    assert driver.status_many([(vmid, config)])[vmid]["status"] == "stopped"
    driver.start(vmid, config, volumes=volumes, log=_noop)
    # A new init (not the pid remembered from before) is found, not mistaken.
    again = driver.status_many([(vmid, config)])[vmid]
    assert again["status"] == "running" and again["pid"] == driver.status(vmid, config)["pid"]
    driver.stop(vmid, config, log=_noop)
    assert driver.status_many([(vmid, config)])[vmid]["status"] == "stopped"
    driver.stop(vmid, config, log=_noop)  # stopping a stopped CT is fine
    assert driver.status(vmid, config)["status"] == "stopped"

    driver.destroy(vmid, config, volumes=volumes, log=_noop)
    assert not os.path.exists(os.path.join(driver.lxcpath, str(vmid)))
    assert owned(volumes) == []


def test_destroy_finishes_when_a_volume_is_already_freed(
    driver: LxcDriver, volumes: Volumes, vmid: int
) -> None:
    """A destroy killed after freeing the volume is run again by its recovery: the
    missing volume is what a destroy wants, not a reason to leave the CT behind
    (seen in a soak: the guest's record stayed, without container or volume)."""
    config = _create(driver, volumes, vmid)
    volumes.free(cfg.parse_mps(config)["rootfs"]["volume"])  # the first attempt got this far
    lines: list[str] = []
    driver.destroy(vmid, config, volumes=volumes, log=lines.append)
    assert not os.path.exists(os.path.join(driver.lxcpath, str(vmid)))
    assert owned(volumes) == []
    assert any("already freed" in line for line in lines)


def test_shutdown_without_force_times_out(driver: LxcDriver, volumes: Volumes, vmid: int) -> None:
    config = _create(driver, volumes, vmid)
    driver.start(vmid, config, volumes=volumes, log=_noop)
    driver.suspend(vmid, config, log=_noop)
    # A frozen CT is thawed first, then shuts down cleanly.
    driver.shutdown(vmid, config, timeout=30, force_stop=False, log=_noop)
    assert driver.status(vmid, config)["status"] == "stopped"
    driver.destroy(vmid, config, volumes=volumes, log=_noop)


def test_two_containers_on_a_bridge(
    driver: LxcDriver, volumes: Volumes, vmid: int, bridge: str
) -> None:
    a, b = vmid, vmid + 1
    ca = _create(
        driver, volumes, a, net0=f"name=eth0,bridge={bridge},ip=10.251.77.11/24,gw=10.251.77.1"
    )
    cb = _create(driver, volumes, b, net0=f"name=eth0,bridge={bridge},ip=10.251.77.12/24")
    for v, c in ((a, ca), (b, cb)):
        driver.start(v, c, volumes=volumes, log=_noop)
    assert bridges.link_exists(f"veth{a}i0") and bridges.link_exists(f"veth{b}i0")
    ports = next(br for br in bridges.list_bridges() if br["name"] == bridge)["ports"]
    assert {f"veth{a}i0", f"veth{b}i0"} <= set(ports)

    def ping(v: int, ip: str) -> bool:
        try:
            driver.attach(v, ["/bin/ping", "-c", "1", "-W", "2", ip], timeout=20)
            return True
        except CommandFailed:
            return False

    assert _until(lambda: ping(a, "10.251.77.12"), 60)
    assert _until(lambda: ping(b, "10.251.77.11"), 60)
    routes = driver.attach(a, ["/sbin/ip", "route"])
    assert "default via 10.251.77.1" in routes

    ifaces = {i["name"]: i for i in driver.interfaces(a, ca)}
    assert ifaces["eth0"]["inet"] == "10.251.77.11/24"
    assert ifaces["eth0"]["hwaddr"].upper() == bridges.guest_mac(a, 0, "crl-test")
    st = driver.status(a, ca)
    assert st["netin"] > 0 and st["netout"] > 0
    for v, c in ((a, ca), (b, cb)):
        driver.stop(v, c, log=_noop)
        driver.destroy(v, c, volumes=volumes, log=_noop)
    assert not bridges.link_exists(f"veth{a}i0")


def test_fresh_driver_sees_running_container(
    driver: LxcDriver, volumes: Volumes, vmid: int
) -> None:
    config = _create(driver, volumes, vmid)
    driver.start(vmid, config, volumes=volumes, log=_noop)
    pid = driver.status(vmid, config)["pid"]
    # As after a restart of corrald: a new instance on the same data dir.
    again = LxcDriver(node="crlnode", data_dir=driver.data_dir)
    assert vmid in again.running()
    st = again.status(vmid, config)
    assert st["status"] == "running" and st["pid"] == pid
    again.stop(vmid, config, log=_noop)
    assert driver.status(vmid, config)["status"] == "stopped"
    again.destroy(vmid, config, volumes=volumes, log=_noop)


def test_failed_create_leaves_nothing(
    driver: LxcDriver, volumes: Volumes, vmid: int, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8bnot really gzip")
    volid = add_template(volumes, str(broken))
    with pytest.raises(Exception):  # noqa: B017 - the archive error itself, whatever its class
        driver.create(
            vmid,
            {"rootfs": f"{STORAGE}:1"},
            volumes=volumes,
            log=_noop,
            params={"ostemplate": volid},
        )
    assert not os.path.exists(os.path.join(driver.lxcpath, str(vmid)))
    assert owned(volumes) == []


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"net0": "name=eth0,bridge=crlbrx,tag=10"}, "net0"),
        ({"memory": 4}, "memory"),
        ({"net0": "bogus"}, "net0"),
        ({"mp0": "crltmp:1,mp=/a/../.."}, "mp0"),
        ({"rootfs": "nosuchstorage:1"}, "rootfs"),
        ({"rootfs": f"{NO_CT_STORAGE}:1"}, "rootfs"),
        ({"mp0": f"{NO_CT_STORAGE}:1,mp=/data"}, "mp0"),
    ],
)
def test_bad_config_leaves_nothing(
    driver: LxcDriver, volumes: Volumes, vmid: int, extra: dict, key: str
) -> None:
    with pytest.raises(ParamError) as err:
        _create(driver, volumes, vmid, **extra)
    assert key in err.value.errors
    assert not os.path.exists(os.path.join(driver.lxcpath, str(vmid)))
    assert owned(volumes) == []


def test_release_and_adopt_on_another_node(
    driver: LxcDriver, volumes: Volumes, vmid: int, tmp_path: Path
) -> None:
    """A restart migration's driver half: the volumes stay, the lxc config moves."""
    config = _create(driver, volumes, vmid, mp0=f"{STORAGE}:1,mp=/data")
    assert set(driver.volumes_of(config)) == {"rootfs", "mp0"}
    assert driver.volumes_of({"rootfs": f"{STORAGE}:1"}) == {}  # not allocated yet
    driver.start(vmid, config, volumes=volumes, log=_noop)
    driver.attach(vmid, ["/bin/sh", "-c", "echo kept > /data/f; echo root > /f"])
    with pytest.raises(Conflict):
        driver.release(vmid, config, volumes=volumes, log=_noop)
    driver.shutdown(vmid, config, timeout=30, force_stop=True, log=_noop)
    before = owned(volumes)
    driver.release(vmid, config, volumes=volumes, log=_noop)
    assert not os.path.exists(os.path.join(driver.lxcpath, str(vmid)))
    assert owned(volumes) == before and len(before) == 2
    driver.release(vmid, config, volumes=volumes, log=_noop)  # idempotent

    (tmp_path / "node2").mkdir()
    other = LxcDriver(node="crlnode2", data_dir=str(tmp_path / "node2"))
    try:
        lines: list[str] = []
        log: list[str] = []
        other.adopt(vmid, config, volumes=volumes, log=lines.append)
        conf = Path(other.lxcpath, str(vmid), "config").read_text()
        assert f"lxc.log.file = {other.lxcpath}/{vmid}/lxc.log" in conf
        other.adopt(vmid, config, volumes=volumes, log=log.append)  # known: nothing to do
        assert len(lines) == 1 and log == []
        other.start(vmid, config, volumes=volumes, log=_noop)
        assert other.attach(vmid, ["/bin/cat", "/data/f", "/f"]).split() == ["kept", "root"]
        assert other.status(vmid, config)["status"] == "running"
        assert driver.status(vmid, config)["status"] == "stopped"
        other.stop(vmid, config, log=_noop)
        other.destroy(vmid, config, volumes=volumes, log=_noop)
        assert owned(volumes) == []
    finally:
        cleanup_lxcpath(other.lxcpath)


def test_resize_rootfs(driver: LxcDriver, volumes: Volumes, vmid: int) -> None:
    config = _create(driver, volumes, vmid)
    config = driver.resize(vmid, config, "rootfs", 3 << 30, volumes=volumes, log=_noop)
    assert ",size=3G" in config["rootfs"]
    assert driver.status(vmid, config)["maxdisk"] == 3 << 30
    with pytest.raises(ParamError):
        driver.resize(vmid, config, "rootfs", 1 << 30, volumes=volumes, log=_noop)
    with pytest.raises(ParamError):
        driver.resize(vmid, config, "mp9", 1 << 30, volumes=volumes, log=_noop)
    driver.destroy(vmid, config, volumes=volumes, log=_noop)


def test_mount_point_and_identity_files(driver: LxcDriver, volumes: Volumes, vmid: int) -> None:
    config = _create(
        driver, volumes, vmid, mp0=f"{STORAGE}:1,mp=/data", nameserver="192.0.2.53",
        searchdomain="example.org",
    )  # fmt: skip
    driver.start(vmid, config, volumes=volumes, log=_noop)
    driver.attach(vmid, ["/bin/sh", "-c", "echo hello > /data/f"])
    host = volumes.mount_rootdir(config["mp0"].split(",")[0])
    assert Path(host, "f").read_text() == "hello\n"
    resolv = driver.attach(vmid, ["/bin/cat", "/etc/resolv.conf"])
    assert "nameserver 192.0.2.53" in resolv and "search example.org" in resolv
    driver.stop(vmid, config, log=_noop)
    driver.destroy(vmid, config, volumes=volumes, log=_noop)
    assert owned(volumes) == []


@pytest.fixture
def open_dir(busybox_template: str) -> Iterator[str]:
    """pytest's tmp dirs are 0700 under /tmp/pytest-of-root: the container's mapped
    root (uid 100000) could not reach its rootfs there, so use a 0755 path."""
    path = tempfile.mkdtemp(prefix="crl-unpriv-", dir="/var/tmp")
    os.chmod(path, 0o755)
    yield path
    _cleanup = LxcDriver(node="crlnode", data_dir=os.path.join(path, "node"))
    for name in os.listdir(_cleanup.lxcpath):
        subprocess.run(
            ["lxc-stop", "-P", _cleanup.lxcpath, "-n", name, "-k"], capture_output=True, timeout=60
        )
    shutil.rmtree(path, ignore_errors=True)


@needs_unprivileged
def test_unprivileged_container(
    open_dir: str, busybox_template: str, vmid: int, subids: None
) -> None:
    driver = LxcDriver(node="crlnode", data_dir=os.path.join(open_dir, "node"))
    volumes = dir_volumes(os.path.join(open_dir, "storage"), busybox_template)
    config = _create(driver, volumes, vmid, unprivileged=1)
    root = volumes.mount_rootdir(config["rootfs"].split(",")[0])
    assert os.stat(root).st_uid == 100000
    assert os.stat(os.path.join(root, "bin/busybox")).st_uid == 100000
    driver.start(vmid, config, volumes=volumes, log=_noop)
    pid = driver.status(vmid, config)["pid"]
    assert os.stat(f"/proc/{pid}").st_uid == 100000  # root inside is 100000 outside
    assert driver.attach(vmid, ["/usr/bin/id", "-u"]).strip() == "0"
    uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    assert uid_map == ["0", "100000", "65536"]
    driver.shutdown(vmid, config, timeout=30, force_stop=False, log=_noop)
    driver.destroy(vmid, config, volumes=volumes, log=_noop)
    assert owned(volumes) == []


def test_checks_before_the_task_are_cluster_wide(
    driver: LxcDriver, busybox_template: str, vmid: int, tmp_path: Path
) -> None:
    """The API node may not be the CT's node: check_create only judges what the
    storage configs say; what lives on the CT's node is judged by create()."""
    configs = {
        "elsewhere": {"type": "dir", "path": str(tmp_path / "e"), "nodes": "othernode"},
        "templ": {"type": "dir", "path": str(tmp_path / "t"), "content": "vztmpl"},
    }
    vols = Volumes(lambda: configs, node="crlnode")
    template = "templ:vztmpl/only-on-othernode.tar.gz"
    config = {"rootfs": "elsewhere:1"}
    driver.check_create(vmid, config, params={"ostemplate": template}, volumes=vols)
    with pytest.raises(ParamError) as err:
        driver.check_create(vmid, {"rootfs": "templ:1"}, params={"ostemplate": template},
                            volumes=vols)  # fmt: skip
    assert "rootfs" in err.value.errors
    with pytest.raises(ParamError) as err:
        driver.create(vmid, config, volumes=vols, log=_noop, params={"ostemplate": template})
    assert "not available on node 'crlnode'" in err.value.errors["rootfs"]
    assert "rootfs: storage 'elsewhere'" in str(err.value)  # the task log says why
    configs["elsewhere"].pop("nodes")
    with pytest.raises(ParamError) as err:
        driver.create(vmid, config, volumes=vols, log=_noop, params={"ostemplate": template})
    assert "does not exist on node 'crlnode'" in err.value.errors["ostemplate"]
    assert not os.path.exists(os.path.join(driver.lxcpath, str(vmid)))
    assert not (tmp_path / "e" / "images" / str(vmid)).exists()


@needs_unprivileged
def test_unprivileged_root_behind_a_closed_dir(
    open_dir: str, busybox_template: str, vmid: int, subids: None
) -> None:
    """corrald makes its data dir 0700: an unprivileged CT's mapped root cannot get
    through it to a rootfs below. Said plainly before liblxc aborts; o+x (0711)
    on that dir is enough."""
    locked = os.path.join(open_dir, "locked")
    os.mkdir(locked, 0o700)
    driver = LxcDriver(node="crlnode", data_dir=os.path.join(open_dir, "node"))
    volumes = dir_volumes(os.path.join(locked, "storage"), busybox_template)
    config = _create(driver, volumes, vmid, unprivileged=1)
    with pytest.raises(Unavailable) as err:
        driver.start(vmid, config, volumes=volumes, log=_noop)
    assert f"'{locked}' (mode 0o700) is not searchable by uid 100000" in str(err.value)
    assert driver.status(vmid, config)["status"] == "stopped"
    os.chmod(locked, 0o711)
    driver.start(vmid, config, volumes=volumes, log=_noop)
    assert driver.attach(vmid, ["/usr/bin/id", "-u"]).strip() == "0"
    driver.stop(vmid, config, log=_noop)
    driver.destroy(vmid, config, volumes=volumes, log=_noop)


@pytest.mark.skipif(NESTED_LIMIT is None, reason="this host can start unprivileged containers")
def test_unprivileged_refused_clearly_where_nesting_forbids_it(
    open_dir: str, busybox_template: str, vmid: int, subids: None
) -> None:
    driver = LxcDriver(node="crlnode", data_dir=os.path.join(open_dir, "node"))
    volumes = dir_volumes(os.path.join(open_dir, "storage"), busybox_template)
    said: list[str] = []
    template = f"{STORAGE}:vztmpl/busybox-corral_amd64.tar.gz"
    config = {"hostname": f"crl{vmid}", "memory": 64, "rootfs": f"{STORAGE}:1", "unprivileged": 1}
    config = driver.create(vmid, config, volumes=volumes, log=said.append,
                           params={"ostemplate": template})  # fmt: skip
    assert any("WARNING" in line and "unprivileged containers need" in line for line in said)
    with pytest.raises(Unavailable) as err:
        driver.start(vmid, config, volumes=volumes, log=_noop)
    assert "this host is itself a container" in str(err.value)
    assert driver.status(vmid, config)["status"] == "stopped"
    driver.destroy(vmid, config, volumes=volumes, log=_noop)


def test_memory_through_liblxc_when_no_mount_reaches_the_cgroup(
    driver: LxcDriver, volumes: Volumes, vmid: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A figure the cgroup mounts cannot give comes from liblxc; cpu, which liblxc is
    not asked for, is left out (unknown) rather than shown as 0."""
    config = _create(driver, volumes, vmid)
    driver.start(vmid, config, volumes=volumes, log=_noop)
    try:
        monkeypatch.setattr(cgroups, "MOUNTINFO", os.devnull)  # no cgroup mount visible
        # A fresh collector: the driver's knows the init's cgroup files from its start.
        st = status.Collector(driver.lxcpath).one(vmid, config)
        assert st["status"] == "running"
        assert st["mem"] > 0
        assert "cpu" not in st
    finally:
        monkeypatch.undo()
        driver.stop(vmid, config, log=_noop)
        driver.destroy(vmid, config, volumes=volumes, log=_noop)
