"""The HA simulator: the real CRM and LRM code on simulated nodes, virtual time.

A scenario is data (see tests/cluster/ha/scenarios/*/scenario.json):

    {"nodes": ["node1", "node2", "node3"],
     "guests": {"vm:101": "node1"},             # where each guest's record is
     "resources": {"vm:101": {"state": "started"}},
     "rules": {"r1": {"type": "node-affinity", "resources": "vm:101", "nodes": "node2"}},
     "settings": {"shutdown_policy": "conditional"},
     "commands": [[5, "power node1 off"], [30, "power node1 on"]],
     "duration": 60}

Commands: power NODE on|off, network NODE on|off, blip NODE SECONDS,
shutdown NODE, reboot NODE, crm NODE stop, maintenance NODE enable|disable,
service SID migrate|relocate NODE, service SID started|stopped|disabled|ignored,
service SID fail-start NODE|all|none, service SID crash.

Time advances in TICK steps; every node runs its heartbeat, CRM and LRM every
ROUND seconds, offset by its index so nodes interleave deterministically. After
every step the simulator asserts that no guest runs on two nodes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from corral.cluster.clock import VirtualClock
from corral.cluster.errors import CommandFailed, Unavailable
from corral.cluster.ha import timing
from corral.cluster.ha.env import COMMANDS, RESOURCES, RULES, SETTINGS, HAState, StoreLike
from corral.cluster.ha.lrm import LRM
from corral.cluster.ha.manager import CRM
from corral.cluster.ha.model import resource_from, rule_from, settings_from
from corral.cluster.store_memory import MemoryStore

TICK = 0.1
STALLED_RENEWAL = 1.5  # a renewal attempt over a dead link: call timeout + reconnect (lab)
STEPS_PER_ROUND = round(timing.ROUND / TICK)


class TwoCopies(AssertionError):
    pass


@dataclass
class SimNode:
    name: str
    index: int
    power: bool = True
    network: bool = True
    crm: CRM | None = None
    lrm: LRM | None = None
    wd_deadline: float | None = None
    wd_sids: set[str] = field(default_factory=set)
    shutting: str = ""  # "" | "shutdown" | "reboot"
    renewal_busy_until: float = 0.0  # a renewal stuck on a dead link


class Simulator:
    def __init__(self, scenario: dict[str, Any]) -> None:
        self.t = 0.0
        self.lines: list[str] = []
        self.clock = VirtualClock(start=0.0)
        self.store = MemoryStore(clock=self.clock)
        self.nodes = {name: SimNode(name, i) for i, name in enumerate(sorted(scenario["nodes"]))}
        self.records: dict[str, str] = dict(scenario.get("guests", {}))  # sid -> node
        self.running: dict[str, set[str]] = {sid: set() for sid in self.records}
        self.fail_start: dict[str, set[str]] = {}
        self.first_start: dict[str, float] = {}
        for sid, node in scenario.get("running", {}).items():
            self.running[sid].add(node)
        for sid, params in scenario.get("resources", {}).items():
            self.store.put(RESOURCES + sid, resource_from({**params, "sid": sid}).to_dict())
        for rid, params in scenario.get("rules", {}).items():
            self.store.put(RULES + rid, rule_from({**params, "rule": rid}).to_dict())
        self.store.put(SETTINGS, settings_from(scenario.get("settings", {})))
        self.commands = sorted(
            ((float(t), str(c)) for t, c in scenario.get("commands", [])), key=lambda x: x[0]
        )
        self.duration = float(scenario.get("duration", 60))
        self.max_failover: float | None = None
        self.down_since: dict[str, float] = {}
        for name in sorted(scenario.get("off", [])):
            self.nodes[name].power = False
        for n in self.nodes.values():
            if n.power:
                self._boot(n)

    # -- logging and the world ---------------------------------------------------
    def log(self, level: str, who: str, msg: str) -> None:
        self.lines.append(f"{level:<5}{self.t:7.1f} {who:>12}: {msg}")

    def quorate_for(self, node: SimNode) -> bool:
        return node.power and node.network and self._majority()

    def _majority(self) -> bool:
        up = [n for n in self.nodes.values() if n.power and n.network]
        return len(up) * 2 > len(self.nodes)

    def _boot(self, n: SimNode) -> None:
        env = SimEnv(self, n)
        n.crm, n.lrm = CRM(env), LRM(env)
        n.wd_deadline, n.wd_sids, n.shutting = None, set(), ""
        n.renewal_busy_until = 0.0

    def _power_off(self, n: SimNode, why: str) -> None:
        n.power = False
        n.crm = n.lrm = None
        n.wd_deadline = None
        for sid, where in self.running.items():
            if n.name in where:
                where.discard(n.name)
                self._note_down(sid)
        self.log("info", "hardware", f"server '{n.name}' stopped by {why}")

    def _note_down(self, sid: str) -> None:
        self.down_since.setdefault(sid, self.t)

    def start_guest(self, sid: str, node: str) -> None:
        if self.records.get(sid) != node:
            raise CommandFailed(f"guest {sid} is not on node '{node}'")
        if node in self.fail_start.get(sid, set()) or "all" in self.fail_start.get(sid, set()):
            raise CommandFailed("simulated start failure")
        self.running[sid].add(node)
        self.nodes[node].wd_sids.add(sid)  # the start path registers a guest with the watchdog
        if sid in self.down_since:
            took = self.t - self.down_since.pop(sid)
            self.max_failover = max(self.max_failover or 0.0, took)
        self.check()

    def check(self) -> None:
        for sid, where in self.running.items():
            if len(where) > 1:
                raise TwoCopies(f"t={self.t:.1f}: {sid} runs on {sorted(where)}")

    # -- commands ------------------------------------------------------------------
    def command(self, text: str) -> None:
        self.log("info", "cmdlist", f"execute {text}")
        w = text.split()
        if w[0] in ("power", "network") and w[1] in self.nodes:
            n = self.nodes[w[1]]
            on = w[2] == "on"
            if w[0] == "network":
                n.network = on
            elif on and not n.power:
                n.power = True
                self._boot(n)
            elif not on and n.power:
                self._power_off(n, "power off")
        elif w[0] == "blip":
            self.nodes[w[1]].network = False
            self.commands.append((self.t + float(w[2]), f"network {w[1]} on"))
            self.commands.sort(key=lambda x: x[0])
        elif w[0] in ("shutdown", "reboot"):
            n = self.nodes[w[1]]
            n.shutting = w[0]
            if n.lrm is not None:
                n.lrm.request_shutdown(restart=w[0] == "reboot")
        elif w[0] == "crm" and w[2] == "stop":
            crm = self.nodes[w[1]].crm
            if crm is not None:
                crm.stop()
                self.nodes[w[1]].crm = None
        elif w[0] == "maintenance":
            verb = "enable" if w[2] == "enable" else "disable"
            HAState(self.store).queue_command(f"{verb}-node-maintenance {w[1]}")
        elif w[0] == "service":
            self._service(w[1], w[2:])
        else:
            raise ValueError(f"unknown simulator command '{text}'")

    def _service(self, sid: str, args: list[str]) -> None:
        if args[0] in ("migrate", "relocate"):
            self.store.update(COMMANDS, lambda cur: [*(cur or []), f"{args[0]} {sid} {args[1]}"])
        elif args[0] in ("started", "stopped", "disabled", "ignored"):
            cur = self.store.get_value(RESOURCES + sid)
            self.store.put(RESOURCES + sid, resource_from({**cur, "state": args[0]}).to_dict())
        elif args[0] == "fail-start":
            self.fail_start[sid] = set() if args[1] == "none" else {args[1]}
        elif args[0] == "crash":
            for node in sorted(self.running[sid]):
                self.running[sid].discard(node)
                self._note_down(sid)
        else:
            raise ValueError(f"unknown service command {args}")

    # -- the clock -------------------------------------------------------------------
    def step(self, i: int) -> None:
        while self.commands and self.commands[0][0] <= self.t + 1e-9:
            self.command(self.commands.pop(0)[1])
        self.store.set_quorate(self._majority())
        for n in self.nodes.values():
            if n.power and n.wd_deadline is not None and self.t >= n.wd_deadline - 1e-9:
                killed = sorted(s for s in n.wd_sids if n.name in self.running.get(s, set()))
                self.log("info", "watchdog", f"'{n.name}' expired - killing {killed or 'nothing'}")
                for sid in killed:
                    self.running[sid].discard(n.name)
                    self._note_down(sid)
                n.wd_deadline = None
        for n in self.nodes.values():
            if not n.power or (i - n.index) % STEPS_PER_ROUND:
                continue
            assert n.lrm is not None
            if self.t >= n.renewal_busy_until:
                n.lrm.heartbeat()
                if not self.quorate_for(n):
                    # On a dead link a renewal attempt fails only after its call
                    # timeout and reconnect (~1.5 s in the lab), and the
                    # renewal thread waits for it before the next attempt.
                    n.renewal_busy_until = self.t + STALLED_RENEWAL
            if n.crm is not None:
                n.crm.round()
            n.lrm.round()
            self.check()
            if n.lrm.done and n.shutting:
                reboot = n.shutting == "reboot"
                if n.crm is not None:
                    n.crm.stop()  # a clean shutdown hands the manager lock over at once
                self._power_off(n, n.shutting)
                if reboot:
                    self.commands.insert(0, (self.t + 2.0, f"power {n.name} on"))
                    self.commands.sort(key=lambda x: x[0])

    def run(self) -> list[str]:
        self.log("info", "hardware", "starting simulation")
        steps = round(self.duration / TICK)
        for i in range(steps + 1):
            self.t = round(i * TICK, 1)
            self.clock.advance(self.t - self.clock.monotonic())  # lease expiries fall due
            self.step(i)
        self.log("info", "hardware", f"end: {self.summary()}")
        return self.lines

    def summary(self) -> str:
        where = {sid: ",".join(sorted(n)) or "-" for sid, n in sorted(self.running.items())}
        return " ".join(f"{sid}@{n}" for sid, n in where.items())


class NodeView:
    """The shared store as one simulated node reaches it: every node is an etcd
    member, so a node that is off, cut off or without a majority reaches nothing."""

    def __init__(self, store: MemoryStore, reachable: Callable[[], bool]) -> None:
        self._store = store
        self._reachable = reachable

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._reachable():
                raise Unavailable("etcd unreachable (simulated network)")
            return method(*args, **kwargs)

        return call


class SimEnv:
    """HAEnv of one simulated node."""

    def __init__(self, sim: Simulator, node: SimNode) -> None:
        self.sim = sim
        self.me = node
        self.node = node.name
        self.store = cast(StoreLike, NodeView(sim.store, lambda: sim.quorate_for(node)))

    def now(self) -> float:
        return self.sim.t

    def log(self, level: str, who: str, msg: str) -> None:
        self.sim.log(level, who, msg)

    def quorate(self) -> bool:
        return self.sim.quorate_for(self.me)

    def cluster_nodes(self) -> list[str]:
        return sorted(self.sim.nodes)

    def guest_node(self, sid: str) -> str | None:
        return self.sim.records.get(sid)

    def move_guest(self, sid: str, node: str) -> None:
        self.sim.records[sid] = node

    def guest_running(self, sid: str) -> bool:
        return self.node in self.sim.running.get(sid, set())

    def guest_start(self, sid: str) -> None:
        self.sim.start_guest(sid, self.node)

    def guest_stop(self, sid: str) -> None:
        if self.node in self.sim.running[sid]:
            self.sim.running[sid].discard(self.node)
            self.sim._note_down(sid)

    def guest_migrate(self, sid: str, target: str, *, online: bool) -> None:
        dest = self.sim.nodes[target]
        if not (dest.power and dest.network):
            raise CommandFailed(f"migration target '{target}' unreachable")
        self.sim.records[sid] = target
        if online and self.node in self.sim.running[sid]:
            self.sim.running[sid].discard(self.node)
            self.sim.running[sid].add(target)
            dest.wd_sids.add(sid)  # the receiving node registers the incoming guest

    def watchdog_feed(self, deadline: float, sids: list[str]) -> None:
        self.me.wd_deadline = deadline
        self.me.wd_sids = set(sids) | {s for s in self.me.wd_sids if self.guest_running(s)}

    def watchdog_disarm(self) -> None:
        self.me.wd_deadline = None


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / "scenario.json").read_text()))


def run_dir(path: Path) -> Simulator:
    sim = Simulator(load(path))
    sim.run()
    return sim


def main(argv: list[str] | None = None) -> int:
    """python -m corral.cluster.ha.sim DIR... [--regen]: print or rewrite log.expect."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    regen = "--regen" in args
    for d in [Path(a) for a in args if a != "--regen"]:
        text = "\n".join(run_dir(d).lines) + "\n"
        if regen:
            (d / "log.expect").write_text(text)
        else:
            sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
