"""A node's composition root: everything its daemon assembles, typed.

corral.cluster.daemon builds one `NodeServices` per node (store, access,
task queue and worker, guest drivers, volumes, the guest service, lease...)
and hands it to the task worker (`worker.context`), the status hooks and the
HTTP API, which it finds through the `corral.services` entry point "api"
(cluster never imports web). New code reads the typed attributes
(`services.drivers`, `services.guest_service`).

It is also a mapping, by field name, for the task handlers and modules that
read `services.get("drivers")`, and for what optional modules add at run time
(`services["ha"]`, a status cache): unknown keys live in `extras`. A field
that is None counts as absent, so `services.get("volumes")` is None on a
node without storage, as with the plain dicts tests build.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.cluster.access import Access
    from corral.cluster.guest_driver import GuestDriver, VolumeAccess
    from corral.cluster.guest_service import GuestService
    from corral.cluster.store import Store
    from corral.cluster.store_api import StoreAPI
    from corral.cluster.task_client import Tasks
    from corral.cluster.tasks import TaskWorker

# Set in a request's WSGI environ by the node's root-only unix socket server:
# the caller is root on the node itself (corralsh, as pvesh).
LOCAL_ROOT = "corral.local_root"


@dataclass(eq=False)
class NodeServices(MutableMapping[str, Any]):
    node: str
    data_dir: str
    config: dict[str, Any] = field(default_factory=dict)
    daemon: Any = None  # the running corral.cluster.daemon.Node
    store: StoreAPI | None = None
    access: Access | None = None
    tasks: Tasks | None = None
    worker: TaskWorker | None = None
    etcd: Any = None  # the private etcd member, when the node runs one
    drivers: dict[str, GuestDriver] = field(default_factory=dict)
    volumes: VolumeAccess | None = None
    guest_service: GuestService | None = None
    lease_id: int | None = None  # the node's lease: its live documents die with it
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    # -- the mapping view ----------------------------------------------------------
    def _is_field(self, key: str) -> bool:
        return key in _FIELDS

    def __getitem__(self, key: str) -> Any:
        if self._is_field(key):
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value
        return self.extras[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if self._is_field(key):
            setattr(self, key, value)
        else:
            self.extras[key] = value

    def __delitem__(self, key: str) -> None:
        if self._is_field(key):
            if getattr(self, key) is None:
                raise KeyError(key)
            setattr(self, key, None)
        else:
            del self.extras[key]

    def __iter__(self) -> Iterator[str]:
        for name in _FIELDS:
            if getattr(self, name) is not None:
                yield name
        yield from self.extras

    def __len__(self) -> int:
        return sum(1 for _ in self)


_FIELDS = tuple(f.name for f in fields(NodeServices) if f.name != "extras")


@dataclass
class NodeContext:
    """What the HTTP API needs from the running node (its slice of NodeServices)."""

    store: Store
    access: Access
    tasks: Tasks
    node: str
    data_dir: str
    services: MutableMapping[str, Any]

    @classmethod
    def of(cls, services: NodeServices) -> NodeContext:
        assert services.store is not None and services.access is not None
        assert services.tasks is not None
        return cls(
            services.store,  # type: ignore[arg-type]  # the daemon's is the etcd Store
            services.access,
            services.tasks,
            services.node,
            services.data_dir,
            services,
        )
