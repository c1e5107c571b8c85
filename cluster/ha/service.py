"""HA on a real node: the HAEnv over etcd and the guest service, and its threads.

Three loops, each in its own thread so none can delay another: the heartbeat
(agent lock renewal + watchdog feed, every RENEW), the CRM and the LRM (every
ROUND). They use a store connection of their own whose calls time out after
CALL_TIMEOUT (timing.py), so a busy API never queues ahead of a renewal.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from corral.cluster import guests, keys, metrics_core
from corral.cluster.errors import CommandFailed, CorralError, NotFound
from corral.cluster.guest_service import GuestService
from corral.cluster.ha import timing
from corral.cluster.ha.env import StoreLike
from corral.cluster.ha.lrm import LRM
from corral.cluster.ha.manager import CRM
from corral.cluster.ha.model import parse_sid
from corral.cluster.ha.watchdog import WatchdogClient

log = logging.getLogger(__name__)
HA_USER = "root@pam"
RECENT = 500  # HA log lines kept in memory (tests, status)


class NodeEnv:
    """HAEnv of a real node."""

    def __init__(
        self,
        store: StoreLike,
        node: str,
        guests_svc: GuestService,
        watchdog: WatchdogClient,
        quorate: Callable[[], bool],
    ) -> None:
        self.store = store
        self.node = node
        self.svc = guests_svc
        self.watchdog = watchdog
        self._quorate = quorate
        self.pids: dict[str, int] = {}  # HA guests running here, for the watchdog
        self.pids_lock = threading.Lock()
        self.lines: collections.deque[str] = collections.deque(maxlen=RECENT)

    def now(self) -> float:
        return time.monotonic()

    def log(self, level: str, who: str, msg: str) -> None:
        self.lines.append(f"{time.time():.3f} {level} {who}: {msg}")
        log.log(logging.WARNING if level in ("err", "emai", "warn") else logging.INFO,
                "%s: %s", who, msg)  # fmt: skip

    def quorate(self) -> bool:
        return self._quorate()

    def cluster_nodes(self) -> list[str]:
        return sorted(kv.key[len(keys.NODE_INFO) :] for kv in self.store.range(keys.NODE_INFO))

    def _rec(self, sid: str) -> dict[str, Any] | None:
        kind, vmid = parse_sid(sid)
        rec = self.store.get_value(keys.guest(vmid))
        if rec is None or (rec.get("type") == "lxc") != (kind == "ct"):
            return None
        return dict(rec)

    def guest_node(self, sid: str) -> str | None:
        rec = self._rec(sid)
        return None if rec is None else str(rec["node"])

    def move_guest(self, sid: str, node: str) -> None:
        _, vmid = parse_sid(sid)
        moved_from: list[str] = []

        def move(r: dict[str, Any]) -> dict[str, Any]:
            moved_from[:] = [str(r["node"])]
            r["node"], r["lock"] = node, None  # its old node was fenced: nothing runs there
            return r

        guests.update_record(self.store, vmid, move)  # type: ignore[arg-type]
        # The manager moves a guest's record only to recover it from a fenced node.
        metrics_core.record_failover(
            sid, from_node=moved_from[0] if moved_from else "", to_node=node
        )

    def guest_running(self, sid: str) -> bool:
        rec = self._rec(sid)
        if rec is None or rec["node"] != self.node:
            return False
        try:
            st = self.svc.driver(rec["type"]).status(rec["vmid"], rec["config"])
        except (CorralError, OSError):
            return False
        running = st.get("status") in ("running", "paused")
        with self.pids_lock:
            if running and st.get("pid") and self.pids.get(sid) != int(st["pid"]):
                self.pids[sid] = int(st["pid"])
                self.watchdog.add(sid, int(st["pid"]))
            elif not running:
                self.pids.pop(sid, None)
        return running

    def _wait(self, upid: str, what: str, timeout: float) -> None:
        status = self.svc.wait(upid, timeout=timeout)
        if status.get("exitstatus") != "OK":
            raise CommandFailed(f"{what}: {status.get('exitstatus', 'failed')}")

    def guest_start(self, sid: str) -> None:
        _, vmid = parse_sid(sid)
        self._wait(self.svc.start(vmid, user=HA_USER), f"start {sid}", 120)
        self.guest_running(sid)  # registers the new pid with the watchdog at once

    def guest_stop(self, sid: str) -> None:
        _, vmid = parse_sid(sid)
        self._wait(self.svc.stop(vmid, user=HA_USER), f"stop {sid}", 60)
        with self.pids_lock:
            self.pids.pop(sid, None)

    def guest_migrate(self, sid: str, target: str, *, online: bool) -> None:
        _, vmid = parse_sid(sid)
        rec = self._rec(sid)
        if rec is None:
            raise NotFound(f"guest {sid} does not exist")
        live = online and self.svc.driver(rec["type"]).info.can_live_migrate
        upid = self.svc.migrate(
            vmid, user=HA_USER, target=target, online=live, restart=online and not live
        )
        self._wait(upid, f"migrate {sid}", 600)
        with self.pids_lock:
            self.pids.pop(sid, None)

    def watchdog_feed(self, deadline: float, sids: list[str]) -> None:
        with self.pids_lock:
            pids = {s: p for s, p in self.pids.items() if s in sids}
        self.watchdog.feed(deadline, pids)

    def watchdog_disarm(self) -> None:
        self.watchdog.disarm()


class HAService:
    """The node's HA threads. `stop(restart=True)` is a daemon restart (policy
    conditional freezes the services); `stop()` alone just ends the loops."""

    def __init__(self, env: NodeEnv, *, owns_store: bool = False) -> None:
        self.env = env
        self.owns_store = owns_store
        self.crm = CRM(env)  # type: ignore[arg-type]
        self.lrm = LRM(env)  # type: ignore[arg-type]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, fn, period in (
            ("ha-heartbeat", self.lrm.heartbeat, timing.RENEW),
            ("ha-crm", self.crm.round, timing.ROUND),
            ("ha-lrm", self.lrm.round, timing.ROUND),
        ):
            t = threading.Thread(target=self._loop, args=(fn, period), name=name, daemon=True)
            t.start()
            self.threads.append(t)

    def _loop(self, fn: Callable[[], None], period: float) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                fn()
            except Exception:  # noqa: BLE001 - one failed round must not end HA on this node
                log.exception("HA %s failed", getattr(fn, "__qualname__", fn))
            self.stopping.wait(max(0.0, period - (time.monotonic() - started)))

    def shutdown(self, *, restart: bool, timeout: float = 60.0) -> None:
        """A clean stop of the node: follow the shutdown policy, then end the loops."""
        self.lrm.request_shutdown(restart=restart)
        deadline = time.monotonic() + timeout
        while not self.lrm.done and time.monotonic() < deadline and self.lrm.agent.held:
            time.sleep(0.1)
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=5)
        self.crm.stop()
        if self.lrm.done or not self.lrm.mine:
            self.env.watchdog.close()
        if self.owns_store:
            self.env.store.close()


def start_node_ha(node: Any) -> HAService:
    """Start HA on a corrald node (cluster.daemon.Node) once it has joined the cluster."""
    from corral.cluster.store import Store

    main_store = node.store
    store = Store(list(main_store.endpoints), timeout=timing.CALL_TIMEOUT)
    env = NodeEnv(
        store,  # type: ignore[arg-type]
        node.name,
        node.services["guest_service"],
        WatchdogClient(),
        lambda: main_store.quorate is not False,
    )
    service = HAService(env, owns_store=True)
    service.start()
    return service
