"""The cluster resource manager (CRM): one per cluster, elected through the store.

Every node runs a CRM; the one holding the manager lock (a key created if
absent under its lease) is master and decides, once per round, each
service's state: started, request_stop, stopped, migrate, relocate, fence,
recovery, freeze, error. It writes the manager status when a round changed it,
and only in a transaction that compares the lock's value, so a CRM that lost
its lock changes nothing.

Recovery of a dead node's services waits until the node's agent lock has been
gone for FENCE_MARGIN (timing.py); the write that acknowledges the fence also
compares that the lock is still absent, so an LRM coming back at that moment
either wins (its services stay with it) or sees the new placement.
"""

from __future__ import annotations

from typing import Any

import orjson

from corral.cluster.errors import Unavailable
from corral.cluster.ha import timing
from corral.cluster.ha.env import (
    AGENT_LOCK,
    COMMANDS,
    MANAGER_LOCK,
    MANAGER_STATUS,
    HAEnv,
    HAState,
    LeaseLock,
)
from corral.cluster.ha.model import Resource, Rule
from corral.cluster.ha.rules import select_node

RUNNING_STATES = ("started", "request_stop", "migrate", "relocate")


class CRM:
    def __init__(self, env: HAEnv) -> None:
        self.env = env
        self.ha = HAState(env.store)
        self.state = "startup"
        self.lock = LeaseLock(env.store, MANAGER_LOCK, env.node, timing.MANAGER_TTL)
        self.absent_since: dict[str, float] = {}  # in memory: a new master waits afresh
        self.seen_online: dict[str, bool] = {}

    def log(self, msg: str, level: str = "info") -> None:
        self.env.log(level, f"{self.env.node}/crm", msg)

    def _status(self, new: str) -> None:
        if new != self.state:
            self.log(f"status change {self.state} => {new}")
            self.state = new

    def round(self) -> None:
        try:
            if not self.env.quorate():
                self.lock.held = False
                self._status("wait_for_quorum")
                return
            had = self.lock.held
            if not self.lock.hold():
                self._status("slave")
                return
            if not had:
                self.log("got lock 'ha_manager_lock'")
                self.absent_since = {}
                self.seen_online = {}
            self._status("master")
            self.manage()
        except Unavailable:
            self.lock.held = False
            self._status("wait_for_quorum")

    def stop(self) -> None:
        if self.lock.held:
            self.lock.release()

    # -- one round of decisions ------------------------------------------------
    def manage(self) -> None:
        env, now = self.env, self.env.now()
        ms = self.ha.manager_status()
        as_read = orjson.dumps(ms, option=orjson.OPT_SORT_KEYS)
        ss: dict[str, dict[str, Any]] = ms.setdefault("service_status", {})
        ns: dict[str, str] = ms.setdefault("node_status", {})
        nr: dict[str, dict[str, Any]] = ms.setdefault("node_request", {})
        ms["master_node"] = env.node
        resources = self.ha.resources()
        rules = self.ha.rules()
        policy = self.ha.settings().get("shutdown_policy", "conditional")
        holders = self.ha.agent_holders()
        nodes = env.cluster_nodes()
        known = self.ha.lrm_statuses()
        lrms = {n: known.get(n, {}) for n in nodes}
        compares: list[tuple[Any, ...]] = [self.lock.compare()]
        success: list[tuple[Any, ...]] = []

        commands_kv = env.store.get(COMMANDS)
        if commands_kv is not None and commands_kv.value:
            for command in commands_kv.value:
                self._command(str(command), ss, nr, ns)
            compares.append(("mod", COMMANDS, "==", commands_kv.mod_revision))
            success.append(("delete", COMMANDS))

        def shutdown_mode(n: str) -> str:
            """'' while active; else the effective policy of a node shutting down."""
            mode = lrms[n].get("mode", "active")
            if mode not in ("restart", "shutdown"):
                return ""
            if policy == "conditional":
                return "freeze" if mode == "restart" else "failover"
            return str(policy)

        # nodes
        for n in nodes:
            old = ns.get(n, "unknown")
            if holders.get(n) == n:
                self.absent_since.pop(n, None)
                self.seen_online[n] = True
                maint = nr.get(n, {}).get("maintenance") or shutdown_mode(n) == "migrate"
                new = "maintenance" if maint else "online"
            else:
                self.absent_since.setdefault(n, now)
                if old in ("online", "maintenance"):
                    self.seen_online[n] = True
                new = "fence" if old == "fence" else "unknown"
            if new != old:
                self.log(f"node '{n}': state changed from '{old}' => '{new}'")
                ns[n] = new
        for n in list(ns):
            if n not in nodes:
                del ns[n]
        online = [n for n in nodes if ns.get(n) == "online"]

        # services: add new ones, drop removed/ignored ones
        for sid, res in sorted(resources.items()):
            if res.state == "ignored" or sid in ss:
                continue
            node = env.guest_node(sid)
            if node is None:
                continue
            self.log(f"adding new service '{sid}' on node '{node}'")
            ss[sid] = {"node": node}
            self._set(ms, sid, "started" if res.state == "started" else "request_stop")
        for sid in sorted(ss):
            res_or_none = resources.get(sid)
            if res_or_none is None or res_or_none.state == "ignored":
                self.log(f"removing stale service '{sid}' (no config)")
                del ss[sid]

        # fencing: services on a node whose agent lock is gone. A node never seen
        # online by this master gets AGENT_TTL to take its lock first (cluster start).
        for sid, sd in sorted(ss.items()):
            n = sd["node"]
            if holders.get(n) == n or sd["state"] in ("fence", "recovery", "freeze", "error"):
                continue
            seen = ns.get(n) == "fence" or self.seen_online.get(n)
            if not seen and now - self.absent_since.get(n, now) < timing.AGENT_TTL:
                continue
            self._set(ms, sid, "fence")
            if ns.get(n) != "fence":
                self.log(f"node '{n}': state changed from '{ns.get(n, 'unknown')}' => 'fence'")
                ns[n] = "fence"
                self.log(f"FENCE: waiting for the agent lock of node '{n}' to expire", "emai")
        fenced = sorted({sd["node"] for sd in ss.values() if sd["state"] == "fence"})
        for n in fenced:
            back = holders.get(n) == n
            clean = lrms.get(n, {}).get("state") == "shutdown_done" and n not in holders
            waited = now - self.absent_since.get(n, now) >= timing.FENCE_MARGIN
            if not (back or clean or (waited and n not in holders)):
                continue
            if not back:
                compares.append(("version", AGENT_LOCK + n, "==", 0))
            how = "node shut down cleanly" if clean else "agent lock expired"
            self.log(f"fencing: acknowledged - {how} for node '{n}'", "emai")
            new = "online" if back else "unknown"
            if ns.get(n) != new:
                self.log(f"node '{n}': state changed from '{ns.get(n, 'unknown')}' => '{new}'")
                ns[n] = new
            for sid, sd in sorted(ss.items()):
                if sd["node"] == n and sd["state"] == "fence":
                    self._set(ms, sid, "recovery")

        for sid in sorted(ss):
            for _ in range(5):
                before = (ss[sid]["state"], ss[sid]["node"])
                self._next(ms, sid, resources[sid], rules, online, ns, lrms, shutdown_mode)
                if (ss[sid]["state"], ss[sid]["node"]) == before:
                    break

        if not success and orjson.dumps(ms, option=orjson.OPT_SORT_KEYS) == as_read:
            # Nothing decided: no write. One every round was 2 puts a second, each
            # fsynced by every etcd member and sent to every node's watch.
            return
        success.insert(0, ("put", MANAGER_STATUS, ms))
        if not env.store.txn(compares, success):
            self.log("manager status not written: lock or fence state changed; retrying", "warn")

    def _command(
        self, command: str, ss: dict[str, Any], nr: dict[str, Any], ns: dict[str, str]
    ) -> None:
        words = command.split()
        if len(words) == 3 and words[0] in ("migrate", "relocate"):
            sid, target = words[1], words[2]
            sd = ss.get(sid)
            if sd is None or sd["state"] not in ("started", "stopped", "request_stop"):
                self.log(f"ignore crm command - service '{sid}' is not in a movable state")
            elif ns.get(target) != "online":
                self.log(f"ignore crm command - node '{target}' is not online")
            elif sd["node"] != target:
                self.log(f"got crm command: {command}")
                sd["requested"] = (words[0], target)
        elif len(words) == 2 and words[0] == "enable-node-maintenance":
            self.log(f"got crm command: {command}")
            nr.setdefault(words[1], {})["maintenance"] = 1
        elif len(words) == 2 and words[0] == "disable-node-maintenance":
            self.log(f"got crm command: {command}")
            nr.pop(words[1], None)
        else:
            self.log(f"unknown crm command '{command}'", "err")

    def _set(self, ms: dict[str, Any], sid: str, state: str, **changes: Any) -> None:
        sd = ms["service_status"][sid]
        old = sd.get("state", "")
        sd.update(changes)
        for key in [k for k, v in changes.items() if v is None]:
            del sd[key]
        if state != old or "node" in changes:
            ms["uid_seq"] = int(ms.get("uid_seq", 0)) + 1
            sd["uid"] = f"{ms['uid_seq']}"
            sd.pop("running", None)
        sd["state"] = state
        if state not in ("migrate", "relocate"):
            sd.pop("target", None)
        if state != old:
            where = f"  (node = {sd['node']})" if state in ("started", "recovery") else ""
            self.log(f"service '{sid}': state changed from '{old or 'none'}' to '{state}'{where}")

    def _next(
        self,
        ms: dict[str, Any],
        sid: str,
        res: Resource,
        rules: list[Rule],
        online: list[str],
        ns: dict[str, str],
        lrms: dict[str, dict[str, Any]],
        shutdown_mode: Any,
    ) -> None:
        sd = ms["service_status"][sid]
        state, node = sd["state"], sd["node"]
        result = lrms.get(node, {}).get("results", {}).get(sd.get("uid", ""))
        want_running = res.state == "started"
        placement = {
            s: d.get("target", d["node"])
            for s, d in ms["service_status"].items()
            if d["state"] not in ("stopped", "error")
        }

        def pick(**kw: Any) -> str | None:
            return select_node(sid, online=online, rules=rules, placement=placement, **kw)

        if state == "error" and res.state in ("disabled", "stopped"):
            self._set(ms, sid, "stopped")
        elif state == "freeze":
            if ns.get(node) in ("online", "maintenance") and not shutdown_mode(node):
                self._set(ms, sid, "started" if want_running else "request_stop")
        elif state in ("started", "stopped", "request_stop") and shutdown_mode(node) == "freeze":
            self._set(ms, sid, "freeze")
        elif state == "recovery":
            target = pick(current=None, failback=res.failback)
            if target is None:
                if not sd.get("no_recovery_node"):
                    sd["no_recovery_node"] = 1
                    self.log(
                        f"recovering service '{sid}' from fenced node '{node}' failed, "
                        "no recovery node found",
                        "err",
                    )
                return
            self.env.move_guest(sid, target)
            self.log(f"recover service '{sid}' from fenced node '{node}' to node '{target}'")
            sd.pop("no_recovery_node", None)
            self._set(ms, sid, "started" if want_running else "request_stop", node=target)
        elif state in ("migrate", "relocate"):
            if result is None:
                return
            if result.get("exit_code") == 0:
                self._set(ms, sid, "started" if want_running else "request_stop", node=sd["target"])
            else:
                self.log(f"service '{sid}' - {state} to '{sd['target']}' failed", "err")
                self._set(ms, sid, "started" if want_running else "request_stop")
        elif state == "request_stop":
            if want_running:
                self._set(ms, sid, "started")
            elif result is not None:
                self._set(ms, sid, "stopped")
        elif state == "stopped":
            if want_running:
                self._set(ms, sid, "started")
            else:
                self._requested_move(ms, sid, sd)
        elif state == "started":
            if not want_running:
                self._set(ms, sid, "request_stop")
                return
            if result is not None and result.get("exit_code") != 0:
                failed = [*sd.get("failed_nodes", []), node]
                sd["failed_nodes"] = failed
                target = None
                if len(failed) <= res.max_relocate:
                    target = pick(current=node, failed_nodes=failed, try_next=True)
                if target is None:
                    self.log(f"service '{sid}' failed to start on '{node}' - no more tries", "err")
                    self._set(ms, sid, "error")
                else:
                    self.log(f"relocate service '{sid}' to '{target}' after start failure")
                    self._set(ms, sid, "relocate", target=target)
                return
            if result is not None:
                sd["running"] = 1
                sd.pop("failed_nodes", None)
            if self._requested_move(ms, sid, sd):
                return
            if ns.get(node) == "maintenance":
                target = pick(current=None, failback=res.failback)
                if target is not None and target != node:
                    self.log(f"migrate service '{sid}' to node '{target}' (node in maintenance)")
                    sd.setdefault("maintenance_node", node)
                    self._set(ms, sid, "migrate", target=target)
                return
            if not sd.get("running"):
                return
            back = sd.get("maintenance_node")
            if back and back != node and ns.get(back) == "online":
                self.log(f"moving service '{sid}' back to '{back}', node left maintenance")
                sd.pop("maintenance_node", None)
                self._set(ms, sid, "migrate", target=back)
                return
            if back == node or (back and ns.get(back) not in ("maintenance", "online")):
                sd.pop("maintenance_node", None)
            target = pick(current=node, failback=res.failback)
            if target is not None and target != node:
                self.log(f"migrate service '{sid}' to node '{target}' (placement rules)")
                self._set(ms, sid, "migrate", target=target)

    def _requested_move(self, ms: dict[str, Any], sid: str, sd: dict[str, Any]) -> bool:
        requested = sd.pop("requested", None)
        if not requested:
            return False
        kind, target = requested
        self._set(ms, sid, kind, target=target)
        return True
