"""The one module that talks to etcd (through aetcd).

aetcd is asyncio; corral's daemon is threaded (WSGI workers, task workers).
The store runs one event loop in a private thread and offers a synchronous
API whose every call is bounded by a timeout: when etcd cannot answer in
time the caller gets `Unavailable` (HTTP 503) with the reason, never a hang.

It owns what no client does by itself (ARCHITECTURE.md, "The store"): leases are kept alive by
`KeptLease`, and watches resume from their last revision after a failure,
re-reading the whole range when that revision was compacted.

Keys are relative strings ("nodes/node1"); every key lives under one
versioned prefix (`/corral/v1/`). Values are JSON. The contract (and what is
shared with the in-memory store) is `corral.cluster.store_api.StoreAPI`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError as FutureCancelled
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import urlsplit

# Before grpc loads (aetcd imports it): grpcio's fork handlers restart its
# poller threads in a fork()ed child, which then aborts when the child closes
# its descriptors before exec() - as libvirt's embedded QEMU driver does when
# it starts QEMU inside this process (qemu:///embed: corrald, tests, the lab).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import aetcd
import aetcd.exceptions
import aetcd.rpc
import grpc
import orjson

from corral.cluster import etcd_unary as unary
from corral.cluster import metrics_core
from corral.cluster.clock import REAL, Clock
from corral.cluster.errors import NotQuorate, Unavailable
from corral.cluster.store_api import (
    KV,
    WRITE_UNKNOWN,
    Compare,
    Event,
    KeptLease,
    Op,
    StoreAPI,
)

__all__ = ["KV", "PREFIX", "Event", "KeptLease", "Store", "Watch"]

log = logging.getLogger(__name__)

PREFIX = "/corral/v1/"
DEFAULT_TIMEOUT = 3.0
MAX_REPLY_BYTES = unary.MAX_REPLY_BYTES


def _encode(value: Any) -> bytes:
    return orjson.dumps(value)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    return orjson.loads(raw)


_range_end = unary.range_end


async def _raw_range(
    client: aetcd.Client,
    start: bytes,
    end: bytes | None,
    limit: int,
    *,
    count_only: bool = False,
) -> Any:
    """A Range RPC on the loop (a watch's start and resync): aetcd's request builder
    ignores `limit`."""
    request = unary.range_request(start, end, limit, count_only=count_only)
    return await client.kvstub.Range(request, timeout=client._timeout, metadata=client.metadata)


class Store(StoreAPI):
    """Synchronous, timeout-bounded access to etcd."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        prefix: str = PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock = REAL,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.clock = clock
        self.endpoints = list(endpoints)
        self.prefix = prefix
        self.timeout = timeout
        self._current = 0
        self._client: aetcd.Client | None = None  # watches, lease keep-alives, admin calls
        self._channel = unary.Channel()  # the one-shot KV and lease calls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="etcd-loop", daemon=True)
        self._thread.start()
        self._closed = False
        self._watchers: list[Watch] = []
        self.last_error: str | None = None
        self.last_ok = 0.0
        # None until the quorum probe has run (single-node tools never start it).
        self.quorate: bool | None = None
        self._local = threading.local()
        self._probe: threading.Thread | None = None

    # -- plumbing ---------------------------------------------------------
    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _k(self, key: str) -> bytes:
        return (self.prefix + key).encode()

    def _unk(self, raw: bytes) -> str:
        return raw.decode()[len(self.prefix) :]

    async def _client_async(self) -> aetcd.Client:
        if self._client is None:
            url = urlsplit(self.endpoints[self._current % len(self.endpoints)])
            host, port = url.hostname or "127.0.0.1", url.port or 2379
            if url.scheme == "unix":
                # A private etcd's own socket, unix:///DIR/client:PORT (etcd names it
                # host:port); aetcd dials f"{host}:{port}", which grpc reads as that path.
                path, _, num = url.path.rpartition(":")
                host, port = f"unix://{path}", int(num)
            client = aetcd.Client(
                host=host,
                port=port,
                timeout=int(max(1, self.timeout)),
                # gRPC's default 4 MiB cap on a reply would make whole-cluster reads
                # (100,000 guest records are ~30 MB) fail; etcd bounds requests itself.
                options={"grpc.max_receive_message_length": MAX_REPLY_BYTES},
            )
            await client.connect()
            self._client = client
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._current += 1  # next call tries the next endpoint
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 1.0)

    def call(self, fn: Callable[[aetcd.Client], Any], *, timeout: float | None = None) -> Any:
        """Run `await fn(client)` on the loop, bounded by `timeout` seconds."""
        if self._closed:
            raise Unavailable("store is closed")
        limit = self.timeout if timeout is None else timeout

        async def run() -> Any:
            client = await self._client_async()
            started, ok = time.monotonic(), False
            try:
                out = await asyncio.wait_for(fn(client), limit)
                ok = True
                return out
            except (
                TimeoutError,
                aetcd.exceptions.ConnectionFailedError,
                aetcd.exceptions.ConnectionTimeoutError,
                aetcd.exceptions.InternalError,
                grpc.aio.AioRpcError,
            ):
                await self._drop_client()
                raise
            finally:
                metrics_core.record_etcd(time.monotonic() - started, ok)

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            result = future.result(limit + 0.5)
        except (FutureTimeout, TimeoutError):
            future.cancel()
            self._fail(f"etcd did not answer within {limit:.1f} s")
        except (asyncio.CancelledError, FutureCancelled):
            # The connection was dropped under this call (a failed watch resets it).
            self._fail("connection to etcd was reset")
        except aetcd.exceptions.ClientError as err:
            if isinstance(err, aetcd.exceptions.PreconditionFailedError):
                raise
            self._fail(f"etcd error: {err}")
        except grpc.aio.AioRpcError as err:
            self._fail(f"etcd error: {err.code().name}: {err.details()}")
        except OSError as err:
            self._fail(f"etcd unreachable: {err}")
        self.last_ok = time.monotonic()
        self.last_error = None
        return result

    def _unary(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """One KV ("Range", "Put", "DeleteRange", "Txn") or lease ("LeaseGrant",
        "LeaseRevoke") RPC from this thread, bounded by `timeout` seconds."""
        for attempt in (1, 2):
            if self._closed:
                raise Unavailable("store is closed")
            endpoint = self.endpoints[self._current % len(self.endpoints)]
            kv, leases, channel = self._channel.stubs(endpoint)
            try:
                return self._unary_on(kv, leases, channel, method, request, timeout)
            except ValueError:
                # Another thread's failed call closed the shared channel (unary.Channel)
                # between our taking its stubs and the call: gRPC refused the call
                # before sending anything, so it is safe to make once more on a fresh
                # channel. Any other ValueError is a bug and propagates.
                if self._channel.current(channel) and not self._closed:
                    raise
                if attempt == 2 or self._closed:
                    self._fail("its channel was closed")
        raise AssertionError("unreachable")

    def _unary_on(
        self, kv: Any, leases: Any, channel: grpc.Channel, method: str, request: Any,
        timeout: float | None,
    ) -> Any:  # fmt: skip
        limit = self.timeout if timeout is None else timeout
        stub = leases if method.startswith("Lease") else kv
        started, ok = time.monotonic(), False
        try:
            out = getattr(stub, method)(request, timeout=limit)
            ok = True
        except grpc.RpcError as err:
            code, details = err.code(), err.details()
            if code in unary.RECONNECT and self._channel.drop(channel):
                self._current += 1  # the next call dials the next endpoint
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                self._fail(f"etcd did not answer within {limit:.1f} s")
            if code == grpc.StatusCode.UNAVAILABLE:
                self._fail(f"etcd unreachable: {details}")
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise aetcd.exceptions.PreconditionFailedError(details) from err
            self._fail(f"etcd error: {code.name}: {details}")
        finally:
            metrics_core.record_etcd(time.monotonic() - started, ok)
        self.last_ok = time.monotonic()
        self.last_error = None
        return out

    def _fail(self, reason: str) -> None:
        self.last_error = reason
        raise Unavailable(
            f"cluster state store unavailable: {reason} (endpoints {', '.join(self.endpoints)})"
        )

    def close(self) -> None:
        if self._closed:
            return
        for watch in list(self._watchers):
            watch.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._drop_client(), self._loop).result(2)
        self._closed = True
        self._channel.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2)

    # -- quorum -----------------------------------------------------------
    def start_quorum_probe(self, interval: float = 1.0) -> None:
        """Keep `quorate` current: a linearizable read must succeed within a second.

        Without quorum, writes then fail at once with NotQuorate and reads are
        served by the local member (serializable) and flagged stale.
        """

        def run() -> None:
            while not self._closed:
                try:
                    self.revision(timeout=min(1.0, self.timeout))
                    ok = True
                except Unavailable:
                    ok = False
                if ok != self.quorate:
                    log.warning("cluster is %s", "quorate" if ok else "NOT quorate")
                self.quorate = ok
                time.sleep(interval)

        self._probe = threading.Thread(target=run, name="quorum-probe", daemon=True)
        self._probe.start()

    def _writable(self) -> None:
        if self.quorate is False:
            # The probe may be a second behind: look once more, briefly, before refusing.
            try:
                self.revision(timeout=0.5)
                self.quorate = True
                return
            except Unavailable:
                pass
            raise NotQuorate("cluster not quorate - writes are refused until quorum returns")

    def _serializable(self) -> bool:
        if self.quorate is False:
            self._local.stale = True
            return True
        return False

    # -- key/value --------------------------------------------------------
    def _kv(self, item: Any) -> KV:
        return KV(
            self._unk(item.key),
            _decode(item.value),
            item.mod_revision,
            item.create_revision,
            item.version,
            item.lease,
        )

    def get(self, key: str) -> KV | None:
        request = unary.range_request(self._k(key), serializable=self._serializable())
        kvs = self._unary("Range", request).kvs
        return self._kv(kvs[0]) if kvs else None

    def range_rev(self, prefix: str, *, limit: int = 0) -> tuple[list[KV], int]:
        """Every KV under `prefix` (sorted by key) and the store revision of the read."""
        start = self._k(prefix)
        request = unary.range_request(
            start, _range_end(start), limit, serializable=self._serializable()
        )
        response = self._unary("Range", request)
        return [self._kv(kv) for kv in response.kvs], int(response.header.revision)

    def put(self, key: str, value: Any, *, lease: int | None = None) -> int:
        self._writable()
        request = aetcd.rpc.PutRequest(key=self._k(key), value=_encode(value), lease=lease or 0)
        revision = int(self._unary("Put", request).header.revision)
        self.wrote(revision)
        return revision

    def delete(self, key: str, *, mod_revision: int | None = None) -> bool:
        self._writable()
        if mod_revision is None:
            result = self._unary("DeleteRange", aetcd.rpc.DeleteRangeRequest(key=self._k(key)))
            self._wrote_header(result)
            return bool(result.deleted)
        return self.txn([("mod", key, "==", mod_revision)], [("delete", key)])

    def delete_prefix(self, prefix: str) -> int:
        self._writable()
        start = self._k(prefix)
        request = aetcd.rpc.DeleteRangeRequest(key=start, range_end=_range_end(start))
        result = self._unary("DeleteRange", request)
        self._wrote_header(result)
        return int(result.deleted)

    def _wrote_header(self, result: Any) -> None:
        header = getattr(result, "header", None)
        self.wrote(int(header.revision) if header is not None else WRITE_UNKNOWN)

    def txn(
        self, compare: list[Compare], success: list[Op], failure: list[Op] | None = None
    ) -> bool:
        """One atomic transaction.

        compare: ("version"|"mod"|"create"|"value", key, "=="|"!="|"<"|">", operand)
        ops: ("put", key, value[, lease]) | ("delete", key) | ("delete_prefix", prefix)
        """
        # The first put's key is read back in the transaction: its revision is the
        # write's (read-your-writes of in-memory views, StoreAPI.wrote).
        probe = next((op[1] for op in success if op[0] == "put"), None)
        return self._txn(compare, success, failure, probe) != 0

    def txn_revision(self, compare: list[Compare], success: list[Op]) -> int:
        # The revision comes from reading the first written key inside the same
        # transaction (etcd runs a transaction's operations in order).
        probe = next((op[1] for op in success if op[0] == "put"), None)
        return self._txn(compare, success, None, probe)

    def _txn(
        self, compare: list[Compare], success: list[Op], failure: list[Op] | None, probe: str | None
    ) -> int:
        """0 when a compare failed; else the revision of `probe` after the transaction
        (-1 without a probe)."""
        self._writable()

        def ops(items: list[Op] | None) -> list[Any]:
            out = []
            for item in items or []:
                if item[0] == "put":
                    lease = item[3] if len(item) > 3 else None
                    out.append(unary.put_op(self._k(item[1]), _encode(item[2]), lease))
                elif item[0] == "delete":
                    out.append(unary.delete_op(self._k(item[1])))
                elif item[0] == "delete_prefix":
                    start = self._k(item[1])
                    out.append(unary.delete_op(start, _range_end(start)))
                else:
                    raise ValueError(f"unknown txn op {item[0]}")
            return out

        request = aetcd.rpc.TxnRequest(
            compare=[
                unary.compare(kind, self._k(key), op, _encode(arg) if kind == "value" else arg)
                for kind, key, op, arg in compare
            ],
            success=ops(success) + ([unary.get_op(self._k(probe))] if probe is not None else []),
            failure=ops(failure),
        )
        response = self._unary("Txn", request)
        if not response.succeeded:
            written = 0
        elif probe is None or not response.responses[-1].response_range.kvs:
            written = -1
        else:
            written = int(response.responses[-1].response_range.kvs[0].mod_revision)
        if written > 0:
            self.wrote(written)
        elif (written == 0 and failure) or (written < 0 and success):
            self.wrote(WRITE_UNKNOWN)
        return written

    def revision(self, *, timeout: float | None = None) -> int:
        """The store's current revision (a quorum read: it fails without quorum)."""
        request = unary.range_request(self._k(""), None, 1, count_only=True)
        return int(self._unary("Range", request, timeout=timeout).header.revision)

    def compact(self, revision: int) -> None:
        self.call(lambda c: c.compact(revision))

    def status(self) -> Any:
        """The answering member's status (version, leader, raft index); no quorum needed."""

        async def run(c: aetcd.Client) -> Any:
            return await c.maintenancestub.Status(aetcd.rpc.StatusRequest(), timeout=c._timeout)

        return self.call(run)

    def members(self) -> list[Any]:
        async def run(c: aetcd.Client) -> list[Any]:
            return [m async for m in c.members()]

        return self.call(run)

    # -- leases -----------------------------------------------------------
    def lease_grant(self, ttl: int) -> int:
        self._writable()
        return int(self._unary("LeaseGrant", aetcd.rpc.LeaseGrantRequest(TTL=ttl, ID=0)).ID)

    def lease_refresh(self, lease_id: int) -> int:
        """Renew; returns the TTL granted, 0 when the lease has expired."""
        reply = self.call(lambda c: c.refresh_lease(lease_id))
        return int(reply.TTL) if reply is not None else 0

    def lease_revoke(self, lease_id: int) -> None:
        with contextlib.suppress(Exception):
            self._unary("LeaseRevoke", aetcd.rpc.LeaseRevokeRequest(ID=lease_id))

    # -- watches ----------------------------------------------------------
    def watch(
        self, prefix: str, callback: Callable[[Event], None], *, start_revision: int | None = None
    ) -> Watch:
        """Call `callback` (in the watch's own thread) for every change under `prefix`.

        Starts after `start_revision` (exclusive) when given, else from now.
        """
        if start_revision is None:
            # Fix "now" before returning, so a change made right after watch()
            # returns is always delivered.
            start_revision = self.revision()
        watch = Watch(self, prefix, callback, start_revision)
        self._watchers.append(watch)
        return watch


class Watch:
    """A watch that survives etcd failures by resuming from its last revision."""

    def __init__(
        self,
        store: Store,
        prefix: str,
        callback: Callable[[Event], None],
        start_revision: int | None,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.callback = callback
        self.revision = start_revision  # last revision delivered
        self._events: queue.Queue[Event | None] = queue.Queue()
        self._cancelled = threading.Event()
        self._dispatcher = threading.Thread(
            target=self._dispatch, daemon=True, name=f"watch-{prefix}"
        )
        self._dispatcher.start()
        self._task = asyncio.run_coroutine_threadsafe(self._run(), store._loop)

    def _dispatch(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            try:
                self.callback(event)
            except Exception:  # noqa: BLE001 - a bad consumer must not kill the watch
                log.exception("watch callback failed for %s", self.prefix)

    async def _run(self) -> None:
        backoff = 0.1
        start = self.store._k(self.prefix)
        while not self._cancelled.is_set():
            try:
                client = await self.store._client_async()
                if self.revision is None:
                    response = await asyncio.wait_for(
                        _raw_range(client, start, None, 1, count_only=True), self.store.timeout
                    )
                    self.revision = int(response.header.revision)
                watch = await asyncio.wait_for(
                    client.watch(
                        start, range_end=_range_end(start), start_revision=self.revision + 1
                    ),
                    self.store.timeout,
                )
                backoff = 0.1
                async for ev in watch:
                    if self._cancelled.is_set():
                        break
                    kv = ev.kv
                    kind = "put" if ev.kind == "PUT" else "delete"
                    value = _decode(kv.value) if kind == "put" else None
                    self.revision = int(kv.mod_revision)
                    self._events.put(Event(kind, self.store._unk(kv.key), value, self.revision))
                with contextlib.suppress(Exception):
                    await watch.cancel()
            except aetcd.exceptions.RevisionCompactedError:
                await self._resync()
            except asyncio.CancelledError:
                return
            except Exception as err:  # noqa: BLE001 - reconnect on any stream failure
                log.debug("watch %s interrupted: %s", self.prefix, err)
                await self.store._drop_client()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _resync(self) -> None:
        """Events were compacted away: deliver the whole current range instead."""
        client = await self.store._client_async()
        start = self.store._k(self.prefix)
        response = await _raw_range(client, start, _range_end(start), 0)
        kvs = [self.store._kv(aetcd.rtypes.KeyValue(kv)) for kv in response.kvs]
        self.revision = int(response.header.revision)
        self._events.put(Event("resync", self.prefix, kvs, self.revision))

    def cancel(self) -> None:
        self._cancelled.set()
        self._task.cancel()
        self._events.put(None)
        with contextlib.suppress(ValueError):
            self.store._watchers.remove(self)
