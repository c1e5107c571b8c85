"""The one-machine lab: N corral nodes on one host.

Each node gets a network namespace with an address on a lab bridge, its own
mount namespace, data directory, etcd member and corrald; the cluster is
formed with the real `corral cluster create` and `corral cluster join`. VMs
use `qemu:///embed` (a QEMU driver inside each corrald, no daemon).

    corral lab up --nodes 3         corral lab status
    corral lab kill node2           corral lab start node2
    corral lab partition node3      corral lab heal node3
    corral lab blip node3 1.5       (cut its link for 1.5 s)
    corral lab exec node1 CMD...    corral lab down

Faults: `kill` SIGKILLs every process in the node's network namespace (its
corrald, etcd member and guests: a power loss), then removes the cgroups its
containers and VMs leave, as the reboot after a real power loss would;
`partition` takes its link down (a cut cable). `down` removes everything, and a
failed `up` cleans up after itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from corral.cluster.client import Client

DEFAULT_DIR = "/var/lib/corral-lab"
DEFAULT_SUBNET = "10.249.77.0/24"
API_PORT = 8006


@dataclass
class LabNode:
    name: str
    index: int
    address: str
    netns: str
    veth: str
    data_dir: str

    @property
    def url(self) -> str:
        return f"https://{self.address}:{API_PORT}/"


@dataclass
class Lab:
    dir: str
    prefix: str
    subnet: str
    bridge: str
    nodes: list[LabNode]
    ceph: bool = False
    libvirtd: bool = False  # a real libvirtd per node (live migration) or qemu:///embed

    @property
    def state_file(self) -> Path:
        return Path(self.dir, "lab.json")

    def save(self) -> None:
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, self.state_file)

    @classmethod
    def load(cls, lab_dir: str) -> Lab:
        raw = json.loads(Path(lab_dir, "lab.json").read_text())
        raw["nodes"] = [LabNode(**n) for n in raw["nodes"]]
        return cls(**raw)

    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise SystemExit(
            f"corral lab: no node '{name}' (nodes: {', '.join(n.name for n in self.nodes)})"
        )


def _run(
    argv: list[str], *, check: bool = True, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout}")
    return proc


def _corral_bin(tool: str) -> str:
    return str(Path(sys.executable).with_name(tool))


def in_node(node: LabNode, argv: list[str], *, libvirtd: bool = False) -> list[str]:
    """Run argv inside the node: its network namespace (nsenter, which keeps /sys as
    it is, unlike `ip netns exec`) and a private mount namespace of its own."""
    return [
        "nsenter",
        f"--net=/run/netns/{node.netns}",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-m",
        "corral.cluster.labns",
        *_own_local(node),
        *(["--libvirtd", str(Path(node.data_dir, "libvirtd")), node.address] if libvirtd else []),
        "--",
        *argv,
    ]


def _own_local(node: LabNode) -> list[str]:
    """The `local` storage's path is the first node's (it made the record); every
    other node gets its own directory mounted there, as hosts have their own disks."""
    shared_path = Path(node.data_dir).parent / "node1" / "local"
    own = Path(node.data_dir) / "local"
    return [] if own == shared_path else ["--bind", str(own), str(shared_path)]


def plan(lab_dir: str, count: int, subnet: str, prefix: str) -> Lab:
    net = ipaddress.ip_network(subnet)
    hosts = list(net.hosts())
    if count < 1 or count > min(32, len(hosts) - 10):
        raise SystemExit("corral lab: --nodes must be between 1 and 32")
    nodes = [
        LabNode(
            name=f"node{i}",
            index=i,
            address=str(hosts[9 + i]),
            netns=f"{prefix}-node{i}",
            veth=f"{prefix}v{i}",
            data_dir=str(Path(lab_dir, f"node{i}")),
        )
        for i in range(1, count + 1)
    ]
    return Lab(dir=lab_dir, prefix=prefix, subnet=subnet, bridge=f"{prefix}br0", nodes=nodes)


def _bridge_address(lab: Lab) -> str:
    net = ipaddress.ip_network(lab.subnet)
    return f"{next(net.hosts())}/{net.prefixlen}"


def build_network(lab: Lab) -> None:
    _run(["ip", "link", "add", lab.bridge, "type", "bridge"])
    _run(["ip", "addr", "add", _bridge_address(lab), "dev", lab.bridge])
    _run(["ip", "link", "set", lab.bridge, "up"])
    prefixlen = ipaddress.ip_network(lab.subnet).prefixlen
    for n in lab.nodes:
        _run(["ip", "netns", "add", n.netns])
        peer = f"{lab.prefix}p{n.index}"
        _run(["ip", "link", "add", n.veth, "type", "veth", "peer", "name", peer])
        _run(["ip", "link", "set", n.veth, "master", lab.bridge, "up"])
        _run(["ip", "link", "set", peer, "netns", n.netns])
        ns = ["ip", "-n", n.netns]
        _run([*ns, "link", "set", peer, "name", "eth0"])
        _run([*ns, "addr", "add", f"{n.address}/{prefixlen}", "dev", "eth0"])
        _run([*ns, "link", "set", "eth0", "up"])
        _run([*ns, "link", "set", "lo", "up"])


def start_node(lab: Lab, n: LabNode, *, libvirtd: bool | None = None) -> None:
    """Start the node's corrald (and its libvirtd, if the lab has them) in the node."""
    with_libvirtd = lab.libvirtd if libvirtd is None else libvirtd
    Path(n.data_dir).mkdir(parents=True, exist_ok=True)
    libvirt_uri = (
        "qemu:///system" if with_libvirtd else f"qemu:///embed?root={Path(n.data_dir, 'libvirt')}"
    )
    argv = [
        _corral_bin("corral"),
        "--data-dir",
        n.data_dir,
        "start",
        "--listen",
        f"{n.address}:{API_PORT}",
        "--node",
        n.name,
        "--libvirt-uri",
        libvirt_uri,
    ]
    proc = _run(in_node(n, argv, libvirtd=with_libvirtd), timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{n.name} did not start:\n{proc.stdout}{proc.stderr}")


def _local(n: LabNode) -> Client:
    return Client(socket_path=str(Path(n.data_dir, "corrald.sock")), timeout=30)


def up(
    lab_dir: str,
    count: int,
    subnet: str = DEFAULT_SUBNET,
    prefix: str = "crlab",
    out: Any = sys.stdout,
    *,
    ceph: bool = False,
    libvirtd: bool = False,
) -> Lab:
    if Path(lab_dir, "lab.json").exists():
        raise SystemExit(f"corral lab: a lab already exists in {lab_dir} ('corral lab down')")
    lab = plan(lab_dir, count, subnet, prefix)
    lab.ceph = ceph
    lab.libvirtd = libvirtd
    lab.save()
    try:
        build_network(lab)
        first = lab.nodes[0]
        start_node(lab, first)
        _local(first).call(
            "POST", "/cluster/config", {"clustername": prefix, "link0": first.address}
        )
        fingerprint = next(
            x["pve_fp"]
            for x in _local(first).call("GET", "/cluster/config/join")["nodelist"]
            if x["name"] == first.name
        )
        password = Path(first.data_dir, "initial-admin-password").read_text().strip()
        for n in lab.nodes[1:]:
            # Joining restarts the node; the restart it needs (in the namespace where its
            # libvirtd runs) comes after, so it joins without one and stays stopped.
            start_node(lab, n, libvirtd=False)
            join = in_node(
                n,
                [
                    _corral_bin("corral"),
                    "--data-dir",
                    n.data_dir,
                    "cluster",
                    "join",
                    first.address,
                    "--fingerprint",
                    fingerprint,
                    "--no-start",
                ],
            )
            proc = _run(
                join, timeout=180, check=False, env={**os.environ, "CORRAL_PASSWORD": password}
            )
            if proc.returncode != 0:
                raise RuntimeError(f"{n.name} could not join:\n{proc.stdout}{proc.stderr}")
            start_node(lab, n)
        wait_online(lab, [n.name for n in lab.nodes], timeout=60)
        add_shared_storage(lab)
        if ceph:
            add_ceph_storage(lab)
    except BaseException:
        for n in lab.nodes:  # what went wrong is in the logs, about to be removed
            log = Path(n.data_dir, "corrald.log")
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-12:]
                print(f"--- {n.name} corrald.log (last lines)", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)
        down(lab_dir, quiet=True)
        raise
    print(f"lab with {count} node(s) is up:", file=out)
    for n in lab.nodes:
        print(f"  {n.name:<8} {n.url}", file=out)
    print(f"  shared storage: {SHARED_STORAGE} ({Path(lab.dir, 'shared')})", file=out)
    if ceph:
        print(f"  ceph storage:   {CEPH_STORAGE} (pool rbd, {_ceph(lab).monhost})", file=out)
    print(f"  login: admin@pve / {password if count > 1 else _password(first)}", file=out)
    return lab


SHARED_STORAGE = "labshared"


def add_shared_storage(lab: Lab) -> None:
    """A dir every node sees at the same path (the host's, below the lab dir), marked
    shared: what NFS would be on real hosts, so guests can move between nodes."""
    path = Path(lab.dir, "shared")
    path.mkdir(parents=True, exist_ok=True)
    _local(lab.nodes[0]).call(
        "POST",
        "/storage",
        {
            "storage": SHARED_STORAGE,
            "type": "dir",
            "path": str(path),
            "shared": 1,
            "content": "images,rootdir,vztmpl,iso,snippets",
        },
    )


CEPH_STORAGE = "labceph"


def _ceph(lab: Lab) -> Any:
    from corral.storage.ceph_cluster import CephCluster

    host = _bridge_address(lab).split("/")[0]
    return CephCluster(str(Path(lab.dir, "ceph")), address=host)


def add_ceph_storage(lab: Lab) -> None:
    """A real single-node Ceph on the lab bridge's host address (every node reaches
    it through its veth), and an `rbd` storage on it: shared by nature."""
    cluster = _ceph(lab)
    cluster.start(timeout=180)
    cluster.create_pool("rbd")
    _local(lab.nodes[0]).call(
        "POST",
        "/storage",
        {
            "storage": CEPH_STORAGE,
            "type": "rbd",
            "pool": "rbd",
            "monhost": cluster.monhost,
            "username": "admin",
            "keyring": cluster.keyring_path,
            "content": "images",
        },
    )


def _password(n: LabNode) -> str:
    return Path(n.data_dir, "initial-admin-password").read_text().strip()


def wait_online(lab: Lab, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            nodes = _local(lab.nodes[0]).call("GET", "/nodes")
            online = {x["node"] for x in nodes if x["status"] == "online"}
            if set(names) <= online:
                return
            last = sorted(online)
        except Exception as err:  # noqa: BLE001 - keep waiting
            last = err
        time.sleep(0.3)
    raise RuntimeError(f"nodes {names} not online within {timeout:.0f} s (last: {last})")


def _netns_inode(netns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{netns}").st_ino
    except OSError:
        return None


def node_pids(n: LabNode) -> list[int]:
    """Every process living in the node's network namespace, and their descendants
    (a container with a network of its own lives in another namespace: a power
    loss takes it down with its node all the same)."""
    inode = _netns_inode(n.netns)
    pids: set[int] = set()
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
            if inode is not None and os.stat(entry / "ns" / "net").st_ino == inode:
                pids.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in pids:
                pids.add(child)
                todo.append(child)
    return sorted(pids)


def kill(lab: Lab, name: str) -> int:
    n = lab.node(name)
    pids = node_pids(n)
    groups = container_groups(pids)  # read while they live
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and node_pids(n):
        time.sleep(0.05)
    Path(n.data_dir, "corrald.pid").unlink(missing_ok=True)
    remove_container_groups(groups)
    remove_vm_groups(n)
    return len(pids)


def container_groups(pids: list[int]) -> set[str]:
    """The top cgroups of the containers and lxc monitors among `pids`
    ("lxc.payload.NAME", "lxc.monitor.NAME"): killed with their monitor, nobody
    removes them, and each start after would name its groups NAME-1, NAME-2..."""
    names: set[str] = set()
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        names.update(lxc_group_names(text))
    return names


def lxc_group_names(proc_cgroup: str) -> set[str]:
    """The liblxc top groups a /proc/PID/cgroup text names (in any hierarchy)."""
    names = set()
    for line in proc_cgroup.splitlines():
        top = line.split(":", 2)[-1].lstrip("/").split("/", 1)[0]
        if top.startswith(("lxc.payload.", "lxc.monitor.")):
            names.add(top)
    return names


def remove_container_groups(names: set[str], timeout: float = 2.0) -> list[str]:
    """Remove the named top groups from every hierarchy, once empty (a killed
    process still exiting keeps its group a moment). Returns the groups removed."""
    if not names:
        return []
    tops = [Path(p, name) for p in _cgroup_points() for name in sorted(names)]
    deadline = time.monotonic() + timeout
    removed: list[str] = []
    while True:
        left = [top for top in tops if top.is_dir()]
        for top in left:
            removed.extend(_rmdir_tree(top))
        left = [top for top in left if top.is_dir()]
        if not left or time.monotonic() > deadline:
            return removed
        time.sleep(0.05)


def _rmdir_tree(top: Path) -> list[str]:
    """rmdir `top` and the groups below it, deepest first; a group that still holds
    a process stays (rmdir refuses it), and so do those above it."""
    removed = []
    for root, _dirs, _files in os.walk(top, topdown=False):
        try:
            os.rmdir(root)
            removed.append(root)
        except OSError:
            pass
    return removed


def embed_group_prefix(root: str) -> str:
    """The start of the cgroup names of the VMs an embedded libvirt with this root
    runs: libvirt names them qemu-embed-HASH-ID-NAME.libvirt-qemu, HASH the first 8
    hex digits of the root's SHA-256 (two roots never share a VM's group name)."""
    return f"qemu-embed-{hashlib.sha256(root.encode()).hexdigest()[:8]}-"


def cgroup_mount_points(mountinfo: str) -> list[str]:
    points = []
    for line in mountinfo.splitlines():
        fields, _, fs = line.partition(" - ")
        if fs.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            points.append(fields.split()[4])
    return points


def _cgroup_points() -> list[str]:
    """This host's cgroup mount points ([] when the mount table cannot be read)."""
    try:
        return cgroup_mount_points(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return []


def remove_vm_groups(n: LabNode) -> list[str]:
    """Remove the cgroups of a killed node's VMs. Its embedded libvirt removes a VM's
    groups when the VM stops, and died with it here: on a real host the reboot
    clears them, in the lab they would pile up in the host's hierarchies (one set
    per VM and kill, and per VM still being cleaned up when `down` came). Only
    empty groups go (rmdir refuses others). Returns the groups removed."""
    prefix = embed_group_prefix(str(Path(n.data_dir, "libvirt")))
    removed = []
    for point in _cgroup_points():
        machine = Path(point, "machine")
        try:
            tops = [d for d in machine.iterdir() if d.name.startswith(prefix) and d.is_dir()]
        except OSError:
            continue
        for top in tops:
            removed.extend(_rmdir_tree(top))
    return removed


def partition(lab: Lab, name: str, *, cut: bool) -> None:
    n = lab.node(name)
    _run(["ip", "link", "set", n.veth, "down" if cut else "up"])


def blip(lab: Lab, name: str, seconds: float) -> float:
    """Cut the node's link for `seconds` (a network blip); the measured cut time."""
    if not 0 < seconds <= 600:
        raise SystemExit("corral lab blip: SECONDS must be between 0 and 600")
    partition(lab, name, cut=True)
    started = time.monotonic()
    try:
        time.sleep(seconds)
    finally:
        partition(lab, name, cut=False)
    return time.monotonic() - started


def down(lab_dir: str, *, quiet: bool = False) -> None:
    try:
        lab = Lab.load(lab_dir)
    except (OSError, ValueError):
        if not quiet:
            print(f"corral lab: no lab in {lab_dir}")
        return
    for n in lab.nodes:
        if _netns_inode(n.netns) is not None:
            kill(lab, n.name)  # removes its guests' cgroups too
        _stop_containers(n)
        _run(["ip", "netns", "delete", n.netns], check=False)
        _run(["ip", "link", "delete", n.veth], check=False)
    if lab.ceph:
        try:
            _ceph(lab).stop()
        except Exception as err:  # noqa: BLE001 - keep tearing down
            print(f"corral lab: stopping Ceph: {err}", file=sys.stderr)
    _run(["ip", "link", "delete", lab.bridge], check=False)
    for n in lab.nodes:
        _umount_below(n.data_dir)
    shutil.rmtree(lab_dir, ignore_errors=True)
    if not quiet:
        print("lab removed")


def _stop_containers(n: LabNode) -> None:
    lxcpath = Path(n.data_dir, "lxc")
    if not lxcpath.is_dir() or shutil.which("lxc-stop") is None:
        return
    for ct in lxcpath.iterdir():
        if (ct / "config").exists():
            _run(["lxc-stop", "-P", str(lxcpath), "-n", ct.name, "-k"], check=False, timeout=30)


def _umount_below(path: str) -> None:
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return
    targets = [line.split()[1] for line in mounts if line.split()[1].startswith(path + "/")]
    for target in sorted(targets, key=len, reverse=True):
        _run(["umount", "-l", target], check=False)


def status(lab: Lab, out: Any = sys.stdout) -> None:
    print(f"lab in {lab.dir}: {len(lab.nodes)} node(s) on {lab.subnet} ({lab.bridge})", file=out)
    for n in lab.nodes:
        alive = bool(node_pids(n))
        link = _run(["ip", "-br", "link", "show", n.veth], check=False).stdout.split()
        state = "partitioned" if link and link[1] == "DOWN" else "linked"
        view = "-"
        if alive:
            try:
                nodes = _local(n).call("GET", "/nodes")
                view = " ".join(f"{x['node']}:{x['status']}" for x in nodes)
            except Exception as err:  # noqa: BLE001
                view = f"API unreachable ({err})"
        print(
            f"  {n.name:<8} {n.address:<15} {'running' if alive else 'killed':<8} "
            f"{state:<11} sees: {view}",
            file=out,
        )


def main(args: Any, extra: list[str]) -> int:
    lab_dir = args.lab_dir
    if args.action == "up":
        up(
            lab_dir,
            args.nodes,
            args.subnet,
            args.prefix,
            ceph=bool(getattr(args, "ceph", False)),
            libvirtd=bool(getattr(args, "libvirtd", False)),
        )
        return 0
    if args.action == "down":
        down(lab_dir)
        return 0
    lab = Lab.load(lab_dir)
    if args.action == "status":
        status(lab)
    elif args.action == "kill":
        print(f"killed {kill(lab, args.node)} process(es) of {args.node}")
    elif args.action == "start":
        start_node(lab, lab.node(args.node))
        print(f"{args.node} started")
    elif args.action in ("partition", "heal"):
        partition(lab, args.node, cut=args.action == "partition")
        print(f"{args.node} {'partitioned' if args.action == 'partition' else 'healed'}")
    elif args.action == "blip":
        took = blip(lab, args.node, float(extra[0]) if extra else 1.0)
        print(f"{args.node} cut off for {took:.2f} s")
    elif args.action == "exec":
        if not extra:
            raise SystemExit("corral lab exec NODE CMD...")
        return subprocess.call(in_node(lab.node(args.node), extra))
    return 0
