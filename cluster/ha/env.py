"""The one seam between HA logic and the world.

`HAEnv` is what the CRM and LRM may touch: a store (etcd in production, the
in-memory store in the simulator, same methods), a clock, cluster membership,
the node's guest operations and its watchdog. `HAState` is the HA key layout
on top of any store; `LeaseLock` is a create-if-absent key under a lease,
used for the manager lock and each node's agent lock.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from corral.cluster.ha.model import Resource, Rule, resource_from, rule_from
from corral.cluster.store_api import StoreAPI

PREFIX = "ha/"
RESOURCES = "ha/resources/"  # ha/resources/{sid}: Resource.to_dict()
RULES = "ha/rules/"  # ha/rules/{id}: Rule.to_dict()
SETTINGS = "ha/settings"  # {"shutdown_policy"}
MANAGER_LOCK = "ha/manager_lock"  # {"node", "token"} under the CRM's lease
MANAGER_STATUS = "ha/manager_status"  # the CRM's view (written only under its lock)
AGENT_LOCK = "ha/agent_lock/"  # ha/agent_lock/{node}: {"node", "token"} under its lease
LRM_STATUS = "ha/lrm_status/"  # ha/lrm_status/{node}: the LRM's state and results
COMMANDS = "ha/commands"  # [command, ...] queued for the CRM (migrate, maintenance)


# The store: corral.cluster.store.Store (etcd) or store_memory.MemoryStore.
StoreLike = StoreAPI


class HAEnv(Protocol):
    node: str
    store: StoreLike

    def now(self) -> float:
        """Monotonic seconds (virtual in the simulator)."""
        ...

    def log(self, level: str, who: str, msg: str) -> None: ...

    def quorate(self) -> bool: ...

    def cluster_nodes(self) -> list[str]: ...

    def guest_node(self, sid: str) -> str | None:
        """The node whose guest record holds `sid`, None if the guest is gone."""
        ...

    def move_guest(self, sid: str, node: str) -> None:
        """Re-home a stopped guest's record (recovery, relocation of a stopped guest)."""
        ...

    def guest_running(self, sid: str) -> bool: ...

    def guest_start(self, sid: str) -> None: ...

    def guest_stop(self, sid: str) -> None: ...

    def guest_migrate(self, sid: str, target: str, *, online: bool) -> None:
        """Move the guest to `target` (live when `online` and the driver can)."""
        ...

    def watchdog_feed(self, deadline: float, sids: list[str]) -> None:
        """Kill these HA guests hard unless fed again before `deadline` (env.now() scale)."""
        ...

    def watchdog_disarm(self) -> None: ...


class HAState:
    """Typed reads and writes of the HA keys."""

    def __init__(self, store: StoreLike) -> None:
        self.store = store

    def resources(self) -> dict[str, Resource]:
        out = {}
        for kv in self.store.range(RESOURCES):
            res = resource_from(kv.value)
            out[res.sid] = res
        return out

    def resource(self, sid: str) -> Resource | None:
        raw = self.store.get_value(RESOURCES + sid)
        return None if raw is None else resource_from(raw)

    def rules(self) -> list[Rule]:
        return sorted((rule_from(kv.value) for kv in self.store.range(RULES)), key=lambda r: r.rule)

    def settings(self) -> dict[str, Any]:
        return dict(self.store.get_value(SETTINGS) or {"shutdown_policy": "conditional"})

    def manager_status(self) -> dict[str, Any]:
        return dict(self.store.get_value(MANAGER_STATUS) or {})

    def lrm_statuses(self) -> dict[str, dict[str, Any]]:
        """Every node's LRM status in one read: the CRM's round needs them all (a
        get per node was 200 etcd round trips a second at 100 nodes)."""
        return {
            kv.key[len(LRM_STATUS) :]: dict(kv.value or {}) for kv in self.store.range(LRM_STATUS)
        }

    def agent_holders(self) -> dict[str, str]:
        """node -> holder of its agent lock, for the locks that exist."""
        return {
            kv.key[len(AGENT_LOCK) :]: kv.value.get("node", "")
            for kv in self.store.range(AGENT_LOCK)
        }

    def queue_command(self, command: str) -> None:
        self.store.update(COMMANDS, lambda cur: [*(cur or []), command])

    def take_commands(self) -> list[str]:
        taken: list[str] = []

        def take(cur: Any) -> list[str]:
            taken[:] = list(cur or [])
            return []

        kv = self.store.get(COMMANDS)
        if kv is None or not kv.value:
            return []
        self.store.update(COMMANDS, take)
        return taken


class LeaseLock:
    """A key created if absent under a lease of its own, renewed by `hold`.

    `hold` returns True while the lock is ours. A renewal that etcd refuses
    (lease expired) drops the lock; the next `hold` tries to create it anew.
    """

    def __init__(self, store: StoreLike, key: str, node: str, ttl: int) -> None:
        self.store = store
        self.key = key
        self.node = node
        self.ttl = ttl
        self.lease = 0
        self.token = ""
        self.held = False

    @property
    def value(self) -> dict[str, str]:
        return {"node": self.node, "token": self.token}

    def hold(self) -> bool:
        if self.held:
            # A keepalive is answered by whoever believes it leads etcd, even a
            # leader cut off from the majority (etcd renews leases without
            # consensus). The linearizable read after it proves that member still
            # led a majority after the renewal: only then does the renewal count.
            if self.store.lease_refresh(self.lease) > 0 and self._confirmed():
                return True
            self.held = False
            self.lease = 0
        if not self.lease:
            self.lease = self.store.lease_grant(self.ttl)
            self.token = uuid.uuid4().hex
        if self.store.create(self.key, self.value, lease=self.lease):
            self.held = True
        else:  # someone else holds it: don't keep a lease nobody renews
            self.store.lease_revoke(self.lease)
            self.lease = 0
        return self.held

    def _confirmed(self) -> bool:
        kv = self.store.get(self.key)
        return kv is not None and kv.value == self.value

    def release(self) -> None:
        if self.lease:
            self.store.lease_revoke(self.lease)
        self.held = False
        self.lease = 0

    def compare(self) -> tuple[Any, ...]:
        """A txn compare that holds only while this lock is ours."""
        return ("value", self.key, "==", self.value)
