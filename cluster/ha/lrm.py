"""The local resource manager (LRM): one per node, executes the CRM's decisions.

`heartbeat` keeps the node's agent lock and feeds the watchdog; production
runs it in a thread of its own so a slow guest start never delays a renewal.
`round` reads the manager status and brings each of this node's services to
its state through the guest operations of the environment, reporting one
result per command uid. It acts only while the agent lock is fresh: a node
that cannot renew stops acting, and its watchdog kills its HA guests.
"""

from __future__ import annotations

from typing import Any

import orjson

from corral.cluster.errors import CorralError, Unavailable
from corral.cluster.ha import timing
from corral.cluster.ha.env import AGENT_LOCK, LRM_STATUS, HAEnv, HAState, LeaseLock


class LRM:
    def __init__(self, env: HAEnv) -> None:
        self.env = env
        self.ha = HAState(env.store)
        self.state = "startup"
        self.mode = "active"  # active | restart | shutdown
        self.agent = LeaseLock(env.store, AGENT_LOCK + env.node, env.node, timing.AGENT_TTL)
        self.last_renewal_sent: float | None = None
        self.restarts: dict[str, int] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.mine: list[str] = []  # HA services placed on this node (watchdog scope)
        self.done = False  # shutdown finished: agent lock released
        self._published: tuple[bytes, float] | None = None  # (status, when) last written

    def log(self, msg: str, level: str = "info") -> None:
        self.env.log(level, f"{self.env.node}/lrm", msg)

    def _status(self, new: str) -> None:
        if new != self.state:
            self.log(f"status change {self.state} => {new}")
            self.state = new

    # -- the agent lock and the watchdog ---------------------------------------
    def heartbeat(self) -> None:
        if self.done:
            return
        sent = self.env.now()
        had = self.agent.held and self.agent.token
        try:
            ok = self.agent.hold()
        except Unavailable:
            ok = False
        if ok:
            if had != self.agent.token:  # a new lock, not a renewal of the old one
                self.log(f"got lock 'ha_agent_{self.env.node}_lock'")
            elif self.last_renewal_sent is not None and sent - self.last_renewal_sent > 1.5:
                gap = sent - self.last_renewal_sent
                self.log(f"agent lock renewed again after {gap:.1f} s", "warn")
            self.last_renewal_sent = sent
            self.env.watchdog_feed(sent + timing.WATCHDOG, list(self.mine))

    def fresh(self) -> bool:
        """The agent lock is ours with time to act before the watchdog could fire."""
        if not self.agent.held or self.last_renewal_sent is None:
            return False
        return self.env.now() - self.last_renewal_sent < timing.WATCHDOG - timing.KILL_BUDGET

    def request_shutdown(self, *, restart: bool) -> None:
        self.mode = "restart" if restart else "shutdown"
        self.log(f"{'restart' if restart else 'shutdown'} LRM, wait for the CRM")

    # -- one round of work -------------------------------------------------------
    def round(self) -> None:
        if self.done:
            return
        if not self.fresh():
            was_active = self.state == "active"
            self._status("lost_agent_lock" if was_active else "wait_for_agent_lock")
            return
        try:
            ms = self.ha.manager_status()
            policy = self.ha.settings().get("shutdown_policy", "conditional")
        except Unavailable:
            return
        self._status("active")
        ss: dict[str, dict[str, Any]] = ms.get("service_status", {})
        mine = {sid: sd for sid, sd in ss.items() if sd.get("node") == self.env.node}
        self.mine = sorted(mine)
        for sid, sd in sorted(mine.items()):
            if not self.fresh():
                break
            self._act(sid, sd)
        live = {sd.get("uid") for sd in mine.values()}
        self.results = {uid: r for uid, r in self.results.items() if uid in live}
        if self.mode != "active" and self._shutdown_ready(mine, policy):
            self._finish_shutdown(mine, policy)
            return
        self._publish()

    def _publish(self, state: str | None = None) -> None:
        doc = {"state": state or self.state, "mode": self.mode, "results": self.results}
        body, now = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS), self.env.now()
        last = self._published
        if last is not None and last[0] == body and now - last[1] < timing.STATUS_REFRESH:
            return  # unchanged (timing.STATUS_REFRESH)
        try:
            self.env.store.put(LRM_STATUS + self.env.node, doc)
        except Unavailable:
            return
        self._published = (body, now)

    def _result(self, sd: dict[str, Any], sid: str, code: int) -> None:
        self.results[str(sd.get("uid"))] = {"sid": sid, "exit_code": code}

    def _act(self, sid: str, sd: dict[str, Any]) -> None:
        state, uid = sd.get("state"), str(sd.get("uid"))
        if state == "started":
            if self.env.guest_running(sid):
                if uid not in self.results:
                    self._result(sd, sid, 0)
                return
            if uid in self.results and self.results[uid]["exit_code"] != 0:
                return  # failure reported: the CRM relocates or gives up
            res = self.ha.resource(sid)
            limit = res.max_restart if res else 1
            failures = self.restarts.get(sid, 0)
            if failures or uid in self.results:
                self.log(f"restart service {sid} (failed starts: {failures}, max_restart {limit})")
            else:
                self.log(f"starting service {sid}")
            try:
                self.env.guest_start(sid)
            except (CorralError, OSError) as err:
                self.log(f"unable to start service {sid}: {err}", "err")
                self.restarts[sid] = failures + 1
                if failures + 1 > limit:
                    self.log(f"service {sid} - restart limit reached", "err")
                    self._result(sd, sid, 1)
                return
            self.log(f"service status {sid} started")
            self.restarts.pop(sid, None)
            self._result(sd, sid, 0)
        elif state in ("request_stop", "stopped"):
            if self.env.guest_running(sid):
                self.log(f"stopping service {sid}")
                try:
                    self.env.guest_stop(sid)
                except (CorralError, OSError) as err:
                    self.log(f"unable to stop service {sid}: {err}", "err")
                    return
                self.log(f"service status {sid} stopped")
            self._result(sd, sid, 0)
            self.restarts.pop(sid, None)
        elif state in ("migrate", "relocate") and uid not in self.results:
            target = str(sd["target"])
            online = state == "migrate" and self.env.guest_running(sid)
            self.log(f"service {sid} - start {state} to node '{target}'")
            try:
                if state == "relocate" and self.env.guest_running(sid):
                    self.env.guest_stop(sid)
                self.env.guest_migrate(sid, target, online=online)
            except (CorralError, OSError) as err:
                self.log(f"service {sid} - {state} failed: {err}", "err")
                self._result(sd, sid, 1)
                return
            self.log(f"service {sid} - end {state} to node '{target}'")
            self.restarts.pop(sid, None)
            self._result(sd, sid, 0)

    def _shutdown_ready(self, mine: dict[str, dict[str, Any]], policy: str) -> bool:
        effective = policy
        if policy == "conditional":
            effective = "freeze" if self.mode == "restart" else "failover"
        if effective == "freeze":
            return all(sd.get("state") in ("freeze", "stopped", "error") for sd in mine.values())
        if effective == "migrate":
            return not any(
                sd.get("state") in ("started", "migrate", "relocate") for sd in mine.values()
            )
        return True

    def _finish_shutdown(self, mine: dict[str, dict[str, Any]], policy: str) -> None:
        freeze = policy == "freeze" or (policy == "conditional" and self.mode == "restart")
        if not freeze:
            for sid in sorted(mine):
                if self.env.guest_running(sid):
                    self.log(f"stopping service {sid} (shutdown)")
                    self.env.guest_stop(sid)
        self._publish("shutdown_done")
        self.mine = []
        self.env.watchdog_disarm()
        self.agent.release()
        self.done = True
        self.log("LRM shut down, agent lock released")
