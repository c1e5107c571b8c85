"""corral: node administration.

corral start [--data-dir DIR] [corrald options...]   start corrald in the background
corral stop                                           stop it (SIGTERM, waits)
corral restart [--if-running]                         stop and start it (guests keep running)
corral status                                         node and cluster state
corral template build busybox|debian [--storage local]
corral template import-oci PATH [--name NAME] [--storage local]
corral ha status|add|remove|set|migrate|relocate [SID] [NODE] [--state ...]
corral node maintenance enable|disable [NODE]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from corral.cluster import registry
from corral.cluster.client import ApiError, Client

DEFAULT_DIR = os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral")


def _client(data_dir: str) -> Client:
    return Client(socket_path=os.path.join(data_dir, "corrald.sock"), timeout=10)


def _pid(data_dir: str) -> int | None:
    try:
        pid = int(Path(data_dir, "corrald.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"corrald" in cmdline else None


def cmd_start(args: argparse.Namespace, extra: list[str]) -> int:
    data_dir = args.data_dir
    if _pid(data_dir):
        print(f"corral: corrald already running (pid {_pid(data_dir)})")
        return _print_access(data_dir)
    Path(data_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    corrald = Path(sys.executable).with_name("corrald")
    log = open(Path(data_dir, "corrald.log"), "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [str(corrald), "--data-dir", data_dir, *extra],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(
                f"corral: corrald exited with {proc.returncode}; last log lines:", file=sys.stderr
            )
            lines = Path(data_dir, "corrald.log").read_text(errors="replace").splitlines()
            print("\n".join(lines[-15:]), file=sys.stderr)
            return 1
        if Path(data_dir, "corrald.pid").exists():
            try:
                _client(data_dir).call("GET", "/version")
                return _print_access(data_dir)
            except Exception:  # noqa: BLE001 - not ready yet
                pass
        time.sleep(0.2)
    print(
        f"corral: corrald did not become ready within 60 s; see {data_dir}/corrald.log",
        file=sys.stderr,
    )
    return 1


def _print_access(data_dir: str) -> int:
    conf = json.loads(Path(data_dir, "corral.json").read_text())
    try:
        nodes = _client(data_dir).call("GET", "/cluster/status")
        members = f"{len(nodes) - 1} node(s) in the cluster"
    except ApiError as err:
        members = f"waiting for its cluster: {err}"
    host, _, port = conf["listen"].rpartition(":")
    if host in ("0.0.0.0", "", "::"):
        from corral.cluster.daemon import _primary_address

        host = _primary_address() or "127.0.0.1"
    url = f"https://{host}:{port}/"
    print(f"corral node '{conf['node']}' is running ({members})")
    print(f"  web console: {url}")
    pw_file = Path(data_dir, "initial-admin-password")
    if pw_file.exists():
        print(
            f"  login:       admin@pve / {pw_file.read_text().strip()}  (realm pve; "
            f"also in {pw_file})"
        )
    print("  root@pam logs in with the host's root password")
    return 0


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def cmd_stop(args: argparse.Namespace, _: list[str]) -> int:
    pid = _pid(args.data_dir)
    if pid is None:
        print("corral: corrald is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # Wait for the process itself, not its pid file: the daemon removes the file
        # before it has finished exiting, and a restart must not overlap the old one.
        if _gone(pid):
            print("corral: corrald stopped")
            return 0
        time.sleep(0.1)
    print(f"corral: corrald (pid {pid}) did not stop within 30 s", file=sys.stderr)
    return 1


def cmd_restart(args: argparse.Namespace, extra: list[str]) -> int:
    """Stop and start corrald so the node runs the code installed now (install.sh's
    upgrade in place). Guests keep running: containers and VMs do not live in the
    daemon's process, and the daemon finds them again when it starts."""
    old = _pid(args.data_dir)
    if old is None:
        if args.if_running:
            print("corral: corrald is not running; nothing to restart")
            return 0
        return cmd_start(args, extra)
    if cmd_stop(args, []) != 0:
        return 1
    code = cmd_start(args, extra)
    if code == 0:
        print(
            f"corral: corrald restarted (pid {old} -> {_pid(args.data_dir)}); "
            "the node runs the code installed now, its guests kept running"
        )
    return code


def cmd_status(args: argparse.Namespace, _: list[str]) -> int:
    try:
        client = _client(args.data_dir)
        cluster = client.call("GET", "/cluster/status")
    except Exception as err:  # noqa: BLE001 - report, don't trace
        print(f"corral: node not reachable: {err}", file=sys.stderr)
        return 1
    head = cluster[0]
    print(
        f"cluster {head['name']}: {head['nodes']} node(s), "
        f"{'quorate' if head['quorate'] else 'NOT QUORATE'}"
    )
    for node in cluster[1:]:
        mark = " (local)" if node.get("local") else ""
        print(
            f"  {node['name']:<16} {'online' if node['online'] else 'offline'}"
            f"  {node.get('ip', '')}{mark}"
        )
    for warning in host_warnings():
        print(f"warning: {warning}")
    return 0


def host_warnings() -> list[str]:
    """What on this host will make the node misbehave, for `corral status`."""
    from corral.cluster import hostinfo

    problem = hostinfo.kvm_device_problem(KVM_DEVICE)
    return [problem] if problem else []


KVM_DEVICE = "/dev/kvm"


def cmd_template(args: argparse.Namespace, _: list[str]) -> int:
    """Build or import a container template into a storage's vztmpl content.

    Runs on the node as root, like pveam: it reads the storage's config from
    the cluster state and asks the storage layer where the volume lives
    (`Volumes.file_path`), so any file-based storage type works. Progress goes
    to stderr; stdout gets the new volume ID only.
    """
    from corral.cluster import keys
    from corral.cluster.errors import CorralError
    from corral.cluster.store import Store

    services = registry.load(registry.SERVICES)
    if "templates" not in services or "volumes" not in services:
        print("corral: container templates are unavailable (corral.lxc missing)", file=sys.stderr)
        return 1
    templates = services["templates"]
    if args.action == "build" and args.what not in ("busybox", "debian"):
        print("corral: templates that can be built: busybox, debian", file=sys.stderr)
        return 2
    conf = _conf(args.data_dir)
    endpoints = conf.get("etcd") or [_private_etcd(args.data_dir, conf)]
    store = Store(list(endpoints))
    try:
        volumes = services["volumes"](
            lambda: {kv.key.split("/", 1)[1]: kv.value for kv in store.range(keys.STORAGE)},
            node=conf["node"],
        )
        kind = args.what if args.action == "build" else "oci"
        name = args.name or templates.default_name(kind, args.what)
        volid = f"{args.storage}:vztmpl/{name}"
        if "vztmpl" not in volumes.content_of(args.storage):
            print(
                f"corral: storage '{args.storage}' does not take container templates "
                "(content type 'vztmpl')",
                file=sys.stderr,
            )
            return 1
        dest_dir = os.path.dirname(volumes.file_path(volid))  # also checks the name

        def progress(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

        if args.action == "build" and args.what == "busybox":
            templates.build_busybox(dest_dir, name=name, log=progress)
        elif args.action == "build":
            templates.build_debian(dest_dir, name=name, log=progress)
        else:
            templates.import_oci(args.what, dest_dir, name=name, log=progress)
    except CorralError as err:
        print(f"corral: {err}", file=sys.stderr)
        for key, reason in sorted(err.errors.items()):
            print(f"  {key}: {reason}", file=sys.stderr)
        return 2 if err.status == 400 else 1
    finally:
        store.close()
    print(volid)
    return 0


def _private_etcd(data_dir: str, conf: dict[str, Any]) -> str:
    """The node's own etcd socket (never a TCP port another node's etcd may hold)."""
    return f"unix://{Path(data_dir).resolve()}/etcd/client:{conf.get('etcd_port', 2379)}"


def _conf(data_dir: str) -> dict[str, Any]:
    return dict(json.loads(Path(data_dir, "corral.json").read_text()))


def cmd_cluster(args: argparse.Namespace, extra: list[str]) -> int:
    client = _client(args.data_dir)
    if args.action == "create":
        params = {"clustername": args.target}
        if args.link0:
            params["link0"] = args.link0
        client.call("POST", "/cluster/config", params)
        print(f"cluster '{args.target}' created; join other nodes with:")
        fp = next(
            n["pve_fp"]
            for n in client.call("GET", "/cluster/config/join")["nodelist"]
            if n["name"] == _conf(args.data_dir)["node"]
        )
        print(f"  corral cluster join {_node_address(args.data_dir)} --fingerprint {fp}")
        return 0
    if args.action == "delnode":
        client.call("DELETE", f"/cluster/config/nodes/{args.target}")
        print(f"node '{args.target}' removed")
        return 0
    if args.action == "status":
        return cmd_status(args, extra)
    return _join(args, client)


def _node_address(data_dir: str) -> str:
    host = _conf(data_dir)["listen"].rpartition(":")[0]
    if host in ("0.0.0.0", "", "::"):
        from corral.cluster.daemon import _primary_address

        host = _primary_address() or "127.0.0.1"
    return host


def _join(args: argparse.Namespace, local: Client) -> int:
    """Join the cluster an existing node at args.target belongs to (this node's own
    state is replaced by the cluster's, so a node with guests is refused)."""
    import getpass
    import shutil

    if not args.fingerprint:
        print(
            "corral: --fingerprint is required (the existing node's certificate "
            "SHA-256, shown by 'corral cluster create' and in /nodes)",
            file=sys.stderr,
        )
        return 2
    if local.call("GET", "/cluster/resources", {"type": "vm"}):
        print("corral: this node has guests; a joining node must be empty", file=sys.stderr)
        return 1
    conf = _conf(args.data_dir)
    password = os.environ.get("CORRAL_PASSWORD") or getpass.getpass(
        f"Password for {args.user} on {args.target}: "
    )
    host, _, port = args.target.partition(":")
    remote = Client(
        host=host,
        port=int(port or 8006),
        user=args.user,
        password=password,
        fingerprint=args.fingerprint,
        timeout=30,
    )
    address = _node_address(args.data_dir)
    result = remote.call(
        "POST",
        f"/cluster/config/nodes/{conf['node']}",
        {
            "address": address,
            "etcd_client_port": conf["etcd_port"],
            "etcd_peer_port": conf["etcd_port"] + 1,
        },
    )
    if cmd_stop(args, []) != 0:
        return 1
    data = Path(args.data_dir)
    shutil.rmtree(data / "etcd", ignore_errors=True)  # the cluster's state replaces ours
    ssl_dir = data / "ssl"
    ssl_dir.mkdir(exist_ok=True, mode=0o700)
    (ssl_dir / "ca.pem").write_text(result["ca_cert"])
    fd = os.open(ssl_dir / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(result["ca_key"])
    for name in ("node.pem", "node.key"):
        (ssl_dir / name).unlink(missing_ok=True)  # re-issued by the cluster CA on start
    (data / "initial-admin-password").unlink(missing_ok=True)
    if result.get("voter"):
        conf.update(
            etcd=[],
            etcd_address=address,
            etcd_initial_cluster=result["initial_cluster"],
            etcd_state="existing",
        )
    else:
        conf.update(etcd=result["endpoints"])
    from corral.cluster.daemon import save_config

    save_config(data, conf)
    if getattr(args, "no_start", False):
        print(f"node '{conf['node']}' joined cluster '{result.get('cluster_name')}' (stopped)")
        return 0
    code = cmd_start(args, [])
    if code == 0:
        print(f"node '{conf['node']}' joined cluster '{result.get('cluster_name')}'")
    return code


def cmd_lab(args: argparse.Namespace, extra: list[str]) -> int:
    from corral.cluster import lab

    return lab.main(args, extra)


def cmd_ha(args: argparse.Namespace, _: list[str]) -> int:
    from corral.cluster.ha import cli

    return cli.run(_client(args.data_dir), args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="corral", description="corral node administration")
    parser.add_argument("--data-dir", default=DEFAULT_DIR)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("start", help="start corrald in the background")
    sub.add_parser("stop", help="stop corrald")
    rs = sub.add_parser("restart", help="restart corrald (guests keep running)")
    rs.add_argument(
        "--if-running", action="store_true", help="do nothing when corrald is not running"
    )
    sub.add_parser("status", help="show node and cluster state")
    cl = sub.add_parser("cluster", help="create, join or shrink a cluster")
    cl.add_argument("action", choices=["create", "join", "delnode", "status"])
    cl.add_argument(
        "target",
        nargs="?",
        default="",
        help="cluster name (create), ADDRESS[:PORT] of a member (join), node",
    )
    cl.add_argument("--fingerprint", default=None)
    cl.add_argument("--user", default="admin@pve")
    cl.add_argument("--link0", default=None, help="address other nodes reach this one at")
    cl.add_argument(
        "--no-start", action="store_true", help="join: leave the node stopped afterwards"
    )
    lab = sub.add_parser("lab", help="a cluster of N nodes on this machine (testing, trying)")
    lab.add_argument(
        "action",
        choices=["up", "down", "status", "kill", "start", "partition", "heal", "blip", "exec"],
    )
    lab.add_argument("node", nargs="?", default="")
    lab.add_argument("--nodes", type=int, default=3)
    lab.add_argument(
        "--ceph", action="store_true", help="also a real one-node Ceph and an rbd storage on it"
    )
    lab.add_argument(
        "--libvirtd",
        action="store_true",
        help="a real libvirtd per node (live migration) instead of qemu:///embed",
    )
    lab.add_argument("--lab-dir", default=os.environ.get("CORRAL_LAB_DIR", "/var/lib/corral-lab"))
    lab.add_argument("--subnet", default="10.249.77.0/24")
    lab.add_argument("--prefix", default="crlab", help="names of bridges, namespaces, links")
    from corral.cluster.ha.cli import add_parsers as add_ha_parsers

    add_ha_parsers(sub)  # corral ha ..., corral node maintenance ...
    tpl = sub.add_parser("template", help="container templates")
    tpl.add_argument("action", choices=["build", "import-oci"])
    tpl.add_argument("what", help="busybox|debian for build, a path for import-oci")
    tpl.add_argument("--storage", default="local")
    tpl.add_argument("--name", default=None)
    args, extra = parser.parse_known_args(argv)
    if args.cmd not in ("start", "restart", "lab") and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = {
        "start": cmd_start,
        "stop": cmd_stop,
        "restart": cmd_restart,
        "status": cmd_status,
        "template": cmd_template,
        "cluster": cmd_cluster,
        "lab": cmd_lab,
        "ha": cmd_ha,
        "node": cmd_ha,
    }[args.cmd]
    sys.exit(handler(args, extra))


if __name__ == "__main__":
    main()
