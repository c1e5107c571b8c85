"""corrald: the node daemon.

    corrald --data-dir DIR --listen ADDR:PORT --node NAME [--etcd URL,...]

All of the node's state lives under DIR. Without etcd endpoints it runs a
private etcd there (loopback only; corrald reaches it through a unix socket
in DIR/etcd, so it never talks to another node's etcd on the same port). It
registers the node under a lease kept alive by a thread, publishes live
figures every 2 s, runs the tasks addressed to it, and serves the API over
HTTPS plus a root-only unix socket (for corralsh on the node itself, as
pvesh). SIGTERM stops everything cleanly and takes the node offline at once
(its lease is revoked).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

# grpcio's fork handlers abort a child that runs on after fork() instead of
# exec()ing at once, which libvirt's embedded QEMU driver (qemu:///embed, run
# inside this process) does when it starts QEMU. Set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from corral.cluster import keys, registry, tls
from corral.cluster.access import Access
from corral.cluster.cluster_view import local_items, shared_view
from corral.cluster.errors import Unavailable
from corral.cluster.etcd_embed import EmbeddedEtcd, PortInUse
from corral.cluster.guest_service import GuestService
from corral.cluster.logfmt import add_file_log, setup_logging
from corral.cluster.node_services import LOCAL_ROOT, NodeContext, NodeServices
from corral.cluster.store import KeptLease, Store
from corral.cluster.task_client import Tasks
from corral.cluster.tasks import TaskWorker

# Guest flows beside corral.cluster.guests whose task handlers register on import.
GUEST_FLOWS = (
    "corral.cluster.snapshots",
    "corral.cluster.clones",
    "corral.cluster.backup",
    "corral.cluster.restore",
)

log = logging.getLogger("corrald")

LEASE_TTL = 6  # seconds; a node is shown offline this long after it dies
STATUS_INTERVAL = 2.0  # live figures at most ~2 s stale in /cluster/resources
ADMIN = "admin@pve"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="corrald", description="corral node daemon")
    p.add_argument("--data-dir", default=os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral"))
    p.add_argument("--listen", default=None, help="ADDR:PORT for HTTPS (default 0.0.0.0:8006)")
    p.add_argument("--node", default=None, help="node name (default: the hostname)")
    p.add_argument("--etcd", default=None, help="comma-separated etcd endpoints to join")
    p.add_argument(
        "--etcd-port",
        type=int,
        default=None,
        help="client port of the private etcd (default 2379; peer port +1)",
    )
    p.add_argument("--libvirt-uri", default=None, help="default qemu:///system")
    p.add_argument(
        "--metrics-listen",
        default=None,
        help="ADDR:PORT for an unauthenticated plain-HTTP /metrics (a scrape network; off)",
    )
    p.add_argument("--log-level", default=os.environ.get("CORRAL_LOG_LEVEL", "info"))
    return p.parse_args(argv)


def load_config(data_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """DIR/corral.json overridden by command-line options; written back on first start."""
    path = data_dir / "corral.json"
    conf: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if args.node:
        conf["node"] = args.node
    if args.listen:
        conf["listen"] = args.listen
    if args.etcd:
        conf["etcd"] = [u.strip() for u in args.etcd.split(",") if u.strip()]
    if args.etcd_port:
        conf["etcd_port"] = args.etcd_port
    if args.libvirt_uri:
        conf["libvirt_uri"] = args.libvirt_uri
    if getattr(args, "metrics_listen", None):
        conf["metrics_listen"] = args.metrics_listen
    conf.setdefault("node", socket.gethostname().split(".")[0])
    conf.setdefault("listen", "0.0.0.0:8006")
    conf.setdefault("etcd", [])
    conf.setdefault("etcd_port", 2379)
    conf.setdefault("libvirt_uri", "qemu:///system")
    conf.setdefault("bridge", "vmbr0")
    save_config(data_dir, conf)
    return conf


def save_config(data_dir: Path, conf: dict[str, Any]) -> None:
    path = data_dir / "corral.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(conf, indent=2) + "\n")
    os.replace(tmp, path)


class Node:
    """One running node: its store, services, servers and background loops."""

    def __init__(self, data_dir: Path, conf: dict[str, Any]) -> None:
        self.data_dir = data_dir
        self.conf = conf
        self.name: str = conf["node"]
        self.etcd: EmbeddedEtcd | None = None
        self.store: Store | None = None
        self.lease: KeptLease | None = None
        self.worker: TaskWorker | None = None
        self.servers: list[Any] = []
        self.stopping = threading.Event()
        self.services = NodeServices(
            node=self.name, data_dir=str(data_dir), config=conf, daemon=self
        )
        self.started = time.time()

    # -- startup ----------------------------------------------------------------
    def start(self, *, quorum_wait: float = 10.0) -> None:
        """Serve as soon as the local etcd member answers; join the cluster's state
        (bootstrap, registration, task worker) once it is quorate.

        A node restarting while its cluster has no quorum (the others still
        down) must come up anyway: it answers reads, refuses writes with 503,
        and completes its start by itself when quorum returns.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        endpoints = self.conf["etcd"]
        if not endpoints:
            self.etcd = self._start_etcd()
            endpoints = [self.etcd.local_endpoint]
        self.store = Store(endpoints)
        self.services.etcd = self.etcd
        # A restarted etcd member serves nothing until it has quorum, so this
        # wait is short; without it the API still comes up and answers 503.
        self._wait_member(timeout=3.0)
        self.store.start_quorum_probe()
        self.access = Access(self.store, self.services)
        self._tls()
        self._load_services()
        self.worker = TaskWorker(self.store, self.name)
        self.worker.context = self.services
        self.services.worker = self.worker
        self._serve()
        self.ready = threading.Event()
        threading.Thread(target=self._join_cluster_state, name="bootstrap", daemon=True).start()
        if self.ready.wait(quorum_wait):
            log.info("node ready node=%s url=%s", self.name, self.url)
        else:
            log.warning("no quorum yet: serving reads only until the cluster is quorate")

    def _wait_member(self, timeout: float = 30.0) -> None:
        """The local etcd member answers (no quorum needed for that)."""
        assert self.store is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.store.status()
                return
            except Unavailable as err:
                if time.monotonic() > deadline:
                    log.warning("etcd member not answering yet: %s", err)
                    return
                time.sleep(0.2)

    def _join_cluster_state(self) -> None:
        while not self.stopping.is_set():
            try:
                self._wait_store(timeout=3600)
                self._bootstrap()
                self._register()
                assert self.worker is not None and self.store is not None
                self.worker.start()
                shared_view(self.services, self.store)  # /cluster/resources from memory
                self._start_ha()
                threading.Thread(target=self._publish_loop, name="status", daemon=True).start()
                self.ready.set()
                return
            except Unavailable as err:
                log.warning("waiting for the cluster: %s", err)
                time.sleep(1)

    def _start_ha(self) -> None:
        from corral.cluster.ha.service import start_node_ha  # HA: cluster/ha/

        self.services["ha"] = start_node_ha(self)

    def _tls(self) -> None:
        assert self.store is not None
        ssl_dir = self.data_dir / "ssl"
        name = self.name
        if not (ssl_dir / "ca.pem").exists():
            # A node started with --etcd into an existing cluster takes the cluster's CA
            # from etcd, so every node verifies every other (forwarded calls, migrations).
            try:
                name = (self.store.get_value(keys.CLUSTER) or {}).get("name", self.name)
                shared = self.store.get_value(keys.CLUSTER_CA)
            except Unavailable:
                shared = None
            if shared:
                tls.install_ca(ssl_dir, shared["cert"], shared["key"])
        cert, key = tls.ensure_ca(ssl_dir, name)
        try:
            mine = {"cert": cert.read_text(), "key": key.read_text()}
            if not self.store.create(keys.CLUSTER_CA, mine):
                shared = self.store.get_value(keys.CLUSTER_CA) or {}
                if shared.get("cert") != mine["cert"]:
                    if (ssl_dir / "node.pem").exists():
                        # Its certificate is already known (pinned fingerprints): say so
                        # rather than swap the CA under it.
                        log.warning("this node's CA is not the cluster's (in etcd)")
                    else:
                        # Two fresh nodes raced: the first CA in etcd is the cluster's.
                        tls.install_ca(ssl_dir, shared["cert"], shared["key"])
        except Unavailable as err:
            log.info("cluster CA not shared yet (%s); kept this node's", err)
        host = self.conf["listen"].rpartition(":")[0]
        self.cert, self.key = tls.ensure_node_cert(
            ssl_dir, self.name, [host, _primary_address() or ""]
        )

    def _start_etcd(self) -> EmbeddedEtcd:
        """Start the private etcd; a port held by another process ends the start at
        once with a message naming it (never a restart loop)."""
        etcd = self._embedded_etcd()
        etcd.on_fatal = self._etcd_lost
        try:
            etcd.start()
        except PortInUse as err:
            raise SystemExit(f"corrald: {err}") from None
        return etcd

    def _etcd_lost(self, reason: str) -> None:
        log.error("stopping: the private etcd cannot run: %s", reason)
        os.kill(os.getpid(), signal.SIGTERM)

    def _embedded_etcd(self) -> EmbeddedEtcd:
        return EmbeddedEtcd(
            self.data_dir / "etcd" / "data",
            name=self.name,
            client_port=self.conf["etcd_port"],
            address=self.conf.get("etcd_address", "127.0.0.1"),
            initial_cluster=self.conf.get("etcd_initial_cluster"),
            state=self.conf.get("etcd_state", "new"),
        )

    def move_etcd(self, address: str) -> None:
        """Make the private etcd reachable by peers at `address` (cluster create).

        The member's advertised peer URL is updated first, then etcd restarts
        listening there; clients keep using loopback throughout.
        """
        assert self.etcd is not None and self.store is not None
        if address == self.etcd.address:
            return
        members = self.store.members()
        me = next(m for m in members if m.name == self.name)
        peer = f"http://{address}:{self.etcd.peer_port}"
        self.store.call(lambda c: c.update_member(me.id, [peer]))
        self.conf["etcd_address"] = address
        save_config(self.data_dir, self.conf)
        self.etcd.stop()
        self.etcd = self._start_etcd()
        self.services.etcd = self.etcd
        self._wait_store()

    def _wait_store(self, timeout: float = 30.0) -> None:
        assert self.store is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.store.revision()  # linearizable: succeeds only with quorum
                self.store.quorate = True
                return
            except Unavailable as err:
                if time.monotonic() > deadline:
                    raise SystemExit(f"corrald: cannot reach etcd: {err}") from None
                time.sleep(0.2)

    @property
    def url(self) -> str:
        host, _, port = self.conf["listen"].rpartition(":")
        if host in ("0.0.0.0", "", "::"):
            host = _primary_address() or "127.0.0.1"
        return f"https://{host}:{port}/"

    def _bootstrap(self) -> None:
        """First start: cluster record, admin user, the `local` storage."""
        assert self.store is not None
        store = self.store
        store.create(keys.CLUSTER, {"name": self.name, "version": 1, "created": int(time.time())})
        access = self.access
        if access.user(ADMIN) is None:
            password = secrets.token_urlsafe(12)
            try:
                access.create_user(ADMIN, password=password, comment="initial administrator")
            except Exception:  # noqa: BLE001 - another node created it first
                password = ""
            if password:
                access.add_acl("/", ADMIN, "Administrator")
                pw_file = self.data_dir / "initial-admin-password"
                fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(password + "\n")
                print(
                    f"corrald: created {ADMIN} with password {password} (also in {pw_file})",
                    flush=True,
                )
        local_path = self.data_dir / "local"
        store.create(
            keys.storage("local"),
            {
                "storage": "local",
                "type": "dir",
                "path": str(local_path),
                "content": "iso,vztmpl,backup,images,rootdir,snippets",
                "shared": 0,
            },
        )
        for sub in ("images", "private", "template/iso", "template/cache", "dump", "snippets"):
            (local_path / sub).mkdir(parents=True, exist_ok=True)

    def _register(self) -> None:
        assert self.store is not None
        host = self.conf["listen"].rpartition(":")[0]
        info = self.store.get_value(keys.node_info(self.name)) or {}
        nodeid = info.get("nodeid") or 1 + len(self.store.range(keys.NODE_INFO))
        self.store.put(
            keys.node_info(self.name),
            {
                "node": self.name,
                "nodeid": nodeid,
                "listen": self.conf["listen"],
                "data_dir": str(self.data_dir),  # where the node keeps run files (migrations)
                "address": host if host not in ("0.0.0.0", "") else (_primary_address() or host),
                "fingerprint": tls.fingerprint(self.cert),
                "url": self.url,
            },
        )
        self._grant_lease()

    def _grant_lease(self) -> None:
        assert self.store is not None
        self.lease = self.store.keep_lease(LEASE_TTL, on_lost=self._lease_lost)
        self.services.lease_id = self.lease.id  # live status documents die with the node
        self.store.put(
            keys.node_alive(self.name),
            {"since": int(time.time()), "pid": os.getpid()},
            lease=self.lease.id,
        )

    def _lease_lost(self) -> None:
        if self.stopping.is_set():
            return
        log.warning("node lease lost; re-registering")
        threading.Thread(target=self._reregister, daemon=True).start()

    def _reregister(self) -> None:
        while not self.stopping.is_set():
            try:
                self._grant_lease()
                log.info("node re-registered")
                return
            except Unavailable as err:
                log.warning("re-registration failed: %s", err)
                time.sleep(1)

    def _load_services(self) -> None:
        """Volumes and guest drivers, found through entry points (ARCHITECTURE.md)."""
        assert self.store is not None
        store = self.store
        services = registry.load(registry.SERVICES)
        if "volumes" in services:
            n = len(keys.STORAGE)

            def fresh() -> dict[str, dict[str, Any]]:
                return {kv.key[n:]: kv.value for kv in store.range(keys.STORAGE)}

            def configs() -> dict[str, dict[str, Any]]:  # from memory on a start's path
                return {
                    k[n:]: v for k, v in local_items(self.services, store, keys.STORAGE).items()
                }

            self.services.volumes = services["volumes"](configs, node=self.name, fresh=fresh)
        drivers = {}
        for name, cls in registry.load(registry.GUEST_DRIVERS).items():
            try:
                drivers[name] = cls(node=self.name, data_dir=str(self.data_dir), options=self.conf)
            except Exception as err:  # noqa: BLE001 - a driver that cannot start is reported
                log.warning("guest driver %s unavailable: %s", name, err)
                registry.UNAVAILABLE.setdefault(registry.GUEST_DRIVERS, {})[name] = str(err)
        self.services.drivers = drivers
        self.services.guest_service = GuestService(
            store,
            Tasks(store),
            node=self.name,
            drivers=drivers,
            volumes=self.services.volumes,
            services=self.services,
        )
        self.services.data_dir = str(self.data_dir)  # node-to-node calls find the CA here
        self.services.probes = {}
        for name, driver in drivers.items():
            threading.Thread(target=self._probe, args=(name, driver), daemon=True).start()
        # The guest flow's task handlers register themselves on import.
        guests = importlib.import_module("corral.cluster.guests")
        for flow in GUEST_FLOWS:
            importlib.import_module(flow)
        STATUS_HOOKS.append(importlib.import_module("corral.cluster.backup_jobs").status_hook)
        STATUS_HOOKS.append(guests.status_hook)
        if "volumes" in self.services:
            STATUS_HOOKS.append(_publish_storage_status)
        # History (rrddata) and pushes to external metric servers.
        for module in ("corral.cluster.metrics_rrd", "corral.cluster.metrics_push"):
            STATUS_HOOKS.append(importlib.import_module(module).status_hook)

    def _probe(self, name: str, driver: Any) -> None:
        """Probe in the background with a deadline: a hung libvirt must not hang the node."""
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["probe"] = driver.probe()
            except Exception as err:  # noqa: BLE001
                result["error"] = str(err)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(30)
        if t.is_alive():
            self.services.probes[name] = {"ok": False, "reason": "probe timed out after 30 s"}
        elif "error" in result:
            self.services.probes[name] = {"ok": False, "reason": result["error"]}
        else:
            probe = result["probe"]
            self.services.probes[name] = {"ok": probe.ok, "reason": probe.reason}
        log.info(
            "driver probe driver=%s ok=%s reason=%r",
            name,
            self.services.probes[name]["ok"],
            self.services.probes[name]["reason"],
        )

    # -- status -----------------------------------------------------------------
    def _publish_loop(self) -> None:
        while True:
            try:
                from corral.cluster import hostinfo

                host = hostinfo.host_status(str(self.data_dir))
                cpuinfo = host.get("cpuinfo", {})
                status = {
                    "cpu": host.get("cpu", 0),
                    "maxcpu": cpuinfo.get("cpus", os.cpu_count()),
                    "mem": host.get("memory", {}).get("used", 0),
                    "maxmem": host.get("memory", {}).get("total", 0),
                    "disk": host.get("rootfs", {}).get("used", 0),
                    "maxdisk": host.get("rootfs", {}).get("total", 0),
                    "uptime": host.get("uptime", 0),
                    "host": host,
                    "time": time.time(),
                }
                lease = self.lease.id if self.lease else None
                assert self.store is not None
                self.store.put(keys.node_status(self.name), status, lease=lease)
                for hook in STATUS_HOOKS:
                    hook(self)
            except Unavailable as err:
                log.debug("status publish failed: %s", err)
            except Exception:  # noqa: BLE001 - keep publishing
                log.exception("status publish failed")
            if self.stopping.wait(STATUS_INTERVAL):
                return

    # -- serving ----------------------------------------------------------------
    def _serve(self) -> None:
        from cheroot import wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter

        from corral.cluster.http_takeover import TakeoverGateway

        assert self.store is not None
        # The API is found through its entry point: cluster never imports web.
        make_app = registry.load(registry.SERVICES)["api"]
        self.services.store, self.services.access = self.store, self.access
        self.services.tasks = Tasks(self.store)
        app = make_app(NodeContext.of(self.services))
        host, _, port = self.conf["listen"].rpartition(":")
        https = wsgi.Server(
            (host.strip("[]") or "0.0.0.0", int(port)),
            app,
            numthreads=16,
            request_queue_size=256,
            server_name=self.name,
            timeout=30,
        )
        https.ssl_adapter = BuiltinSSLAdapter(str(self.cert), str(self.key))
        # WebSocket consoles take their connection over (corral.cluster.http_takeover).
        https.gateway = TakeoverGateway
        sock_path = self.data_dir / "corrald.sock"
        sock_path.unlink(missing_ok=True)

        def local_app(environ: dict[str, Any], start_response: Any) -> Any:
            environ[LOCAL_ROOT] = True
            return app(environ, start_response)

        local = wsgi.Server(str(sock_path), local_app, numthreads=4, server_name=self.name)
        for server in (https, local):
            server.prepare()
            threading.Thread(target=server.serve, name="http", daemon=True).start()
            self.servers.append(server)
        os.chmod(sock_path, 0o600)

    # -- shutdown ---------------------------------------------------------------
    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        log.info("stopping node=%s", self.name)
        if self.services.get("ha") is not None:
            self.services["ha"].shutdown(restart=True, timeout=10)  # policy: freeze on restart
        for server in self.servers:
            try:
                server.stop()
            except Exception:  # noqa: BLE001
                log.exception("server stop failed")
        if self.worker is not None:
            self.worker.stop()
        for driver in (self.services.get("drivers") or {}).values():
            try:
                driver.close()
            except Exception:  # noqa: BLE001
                log.exception("driver close failed")
        if self.lease is not None and self.store is not None:
            self.lease.revoke()  # offline at once for the other nodes
        if self.store is not None:
            self.store.close()
        if self.etcd is not None:
            self.etcd.stop()
        log.info("stopped")


# Modules (the guest flow) add per-interval publishers here: fn(node).
STATUS_HOOKS: list[Any] = []

# A hung storage (an NFS server gone) must not stall the node's status loop.
_storage_status_busy = threading.Lock()


def _publish_storage_status(node: Node) -> None:
    """Every storage's figures as this node sees them, for /cluster/resources."""
    if not _storage_status_busy.acquire(blocking=False):
        return

    def run() -> None:
        try:
            doc = node.services["volumes"].status_all()
            assert node.store is not None
            node.store.put(keys.storage_status(node.name), doc, lease=node.services.get("lease_id"))
        except Exception as err:  # noqa: BLE001 - retried next interval
            log.debug("storage status publish failed: %s", err)
        finally:
            _storage_status_busy.release()

    threading.Thread(target=run, name="storage-status", daemon=True).start()


def _primary_address() -> str | None:
    """The address of the default route's interface (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # TEST-NET: connect() on UDP sends nothing
            return str(sock.getsockname()[0])
        except OSError:
            return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging(args.log_level)
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    # Traversable, not listable: an unprivileged container's mapped root must reach
    # its root filesystem under local/ (as /var/lib/vz is on Proxmox); the secrets
    # below (ssl/, etcd/, the admin password) keep their own 0700/0600 modes.
    os.chmod(data_dir, 0o711)
    add_file_log(data_dir / "log" / "corrald.log")  # read by /nodes/{node}/syslog
    conf = load_config(data_dir, args)
    node = Node(data_dir, conf)
    done = threading.Event()

    def on_signal(signum: int, _: Any) -> None:
        log.info("signal %s received", signal.Signals(signum).name)
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
    except SystemExit:
        node.stop()
        raise
    except Exception as err:
        log.exception("startup failed")
        node.stop()
        sys.exit(f"corrald: startup failed: {err}")
    (data_dir / "corrald.pid").write_text(f"{os.getpid()}\n")
    print(f"corrald: node {node.name} ready at {node.url}", flush=True)
    done.wait()
    node.stop()
    (data_dir / "corrald.pid").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
