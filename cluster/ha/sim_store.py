"""Store access for simulated nodes: one shared in-memory store, reachable per node.

Each simulated node reaches the shared store only while it is powered, its
network is up and it sits with a majority of the powered members (every node
is an etcd member, as in `corral lab`). Without a majority nobody can write
and leases do not run out (etcd needs a leader to expire leases; a new leader
restarts every lease's TTL), which `SimStore.tick` reproduces.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from corral.cluster.errors import Unavailable


@dataclass(frozen=True)
class SimKV:
    key: str
    value: Any
    mod_revision: int
    create_revision: int
    version: int
    lease: int = 0


class SimStore:
    """Revisions, txn compares and leases on a virtual clock."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.rev = 1
        self.data: dict[str, SimKV] = {}
        self.leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, expiry)
        self.next_lease = 0x1000
        self.quorate = True

    def tick(self, quorate: bool) -> None:
        if quorate and not self.quorate:  # a new leader: every lease starts its TTL afresh
            self.leases = {i: (ttl, self.now() + ttl) for i, (ttl, _) in self.leases.items()}
        self.quorate = quorate
        if quorate:
            for lid, (_, expiry) in sorted(self.leases.items()):
                if self.now() >= expiry:
                    self._drop_lease(lid)

    def _drop_lease(self, lid: int) -> None:
        self.leases.pop(lid, None)
        for key in [k for k, kv in self.data.items() if kv.lease == lid]:
            del self.data[key]
        self.rev += 1

    # -- the Store methods the HA code uses ------------------------------------
    def get(self, key: str) -> SimKV | None:
        kv = self.data.get(key)
        return None if kv is None else SimKV(**{**kv.__dict__, "value": copy.deepcopy(kv.value)})

    def get_value(self, key: str, default: Any = None) -> Any:
        kv = self.get(key)
        return default if kv is None else kv.value

    def range(self, prefix: str, *, limit: int = 0) -> list[SimKV]:
        out = [self.get(k) for k in sorted(self.data) if k.startswith(prefix)]
        return [kv for kv in out if kv is not None][: limit or None]

    def _put(self, key: str, value: Any, lease: int | None) -> None:
        if lease and lease not in self.leases:
            raise Unavailable("lease not found")
        self.rev += 1
        old = self.data.get(key)
        self.data[key] = SimKV(
            key,
            copy.deepcopy(value),
            self.rev,
            old.create_revision if old else self.rev,
            old.version + 1 if old else 1,
            lease or 0,
        )

    def put(self, key: str, value: Any, *, lease: int | None = None) -> int:
        self._put(key, value, lease)
        return self.rev

    def create(self, key: str, value: Any, *, lease: int | None = None) -> bool:
        if key in self.data:
            return False
        self._put(key, value, lease)
        return True

    def replace(self, key: str, value: Any, *, mod_revision: int, lease: int | None = None) -> bool:
        kv = self.data.get(key)
        if (kv.mod_revision if kv else 0) != mod_revision:
            return False
        self._put(key, value, lease)
        return True

    def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        kv = self.data.get(key)
        if kv is None or (mod_revision is not None and kv.mod_revision != mod_revision):
            return False
        del self.data[key]
        self.rev += 1
        return True

    def _holds(self, kind: str, key: str, op: str, operand: Any) -> bool:
        kv = self.data.get(key)
        actual: Any = {
            "version": kv.version if kv else 0,
            "mod": kv.mod_revision if kv else 0,
            "create": kv.create_revision if kv else 0,
            "value": kv.value if kv else None,
        }[kind]
        if op == "==":
            return bool(actual == operand)
        if op == "!=":
            return bool(actual != operand)
        return bool(actual < operand) if op == "<" else bool(actual > operand)

    def txn(
        self,
        compare: list[tuple[Any, ...]],
        success: list[tuple[Any, ...]],
        failure: list[tuple[Any, ...]] | None = None,
    ) -> bool:
        ok = all(self._holds(*c) for c in compare)
        for op in success if ok else failure or []:
            if op[0] == "put":
                self._put(op[1], op[2], op[3] if len(op) > 3 else None)
            elif op[0] == "delete":
                self.delete(op[1])
        return ok

    def update(self, key: str, fn: Callable[[Any], Any], *, retries: int = 20) -> Any:
        new = fn(self.get_value(key))
        self._put(key, new, None)
        return new

    def lease_grant(self, ttl: int) -> int:
        self.next_lease += 1
        self.leases[self.next_lease] = (ttl, self.now() + ttl)
        return self.next_lease

    def lease_refresh(self, lease_id: int) -> int:
        if lease_id not in self.leases:
            return 0
        ttl = self.leases[lease_id][0]
        self.leases[lease_id] = (ttl, self.now() + ttl)
        return ttl

    def lease_revoke(self, lease_id: int) -> None:
        if lease_id in self.leases:
            self._drop_lease(lease_id)


class NodeView:
    """The shared store as one simulated node reaches it (or cannot)."""

    def __init__(self, store: SimStore, reachable: Callable[[], bool]) -> None:
        self._store = store
        self._reachable = reachable

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._reachable():
                raise Unavailable("etcd unreachable (simulated network)")
            return method(*args, **kwargs)

        return call
