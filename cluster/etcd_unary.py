"""etcd's one-shot RPCs (range, put, delete, txn, lease grant and revoke) made
straight from the calling thread, on a blocking gRPC channel.

Why not through aetcd like the watches: an aetcd call hops from the caller's
thread to the store's asyncio loop and back, and on that loop it queues behind
the watch events its own write just caused (corrald watches the whole key
space). With two watches open, as corrald has: a put 2.48 ms through the loop,
1.68 ms here; a task's end (three puts) 2.49 ms against 1.86 ms (`tests/bench/bench_etcd.py`).
A blocking call waits in gRPC's C core with the GIL released: nothing queues.

This module builds the requests and holds the channel; `Store` keeps the policy
(timeouts, quorum, what a failure means).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import aetcd.rpc as rpc
import grpc

# gRPC's default 4 MiB cap on a reply would make whole-cluster reads (100,000
# guest records are ~30 MB) fail; etcd bounds requests itself.
MAX_REPLY_BYTES = 1 << 30
# A channel is replaced after a failed call, and its replacement must dial at once:
# a private subchannel pool (gRPC shares subchannels, with their reconnect backoff,
# between channels to one target) and a short backoff.
_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REPLY_BYTES),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# Codes after which the channel is dropped and the next call dials the next endpoint.
RECONNECT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)

_RESULT = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS,
           ">": rpc.Compare.GREATER}  # fmt: skip
_TARGET = {"version": (rpc.Compare.VERSION, "version"), "mod": (rpc.Compare.MOD, "mod_revision"),
           "create": (rpc.Compare.CREATE, "create_revision"),
           "value": (rpc.Compare.VALUE, "value")}  # fmt: skip


def target(endpoint: str) -> str:
    """The gRPC target of an etcd endpoint URL (http://host:port or unix:///DIR/host:port:
    a private etcd's socket, which etcd names host:port)."""
    url = urlsplit(endpoint)
    if url.scheme == "unix":
        return f"unix://{url.path}"
    return f"{url.hostname or '127.0.0.1'}:{url.port or 2379}"


def range_end(prefix: bytes) -> bytes:
    """The key just past every key that starts with `prefix` (etcd's prefix range)."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def range_request(
    start: bytes,
    end: bytes | None = None,
    limit: int = 0,
    *,
    count_only: bool = False,
    serializable: bool = False,
) -> Any:
    request = rpc.RangeRequest(
        key=start,
        limit=limit,
        count_only=count_only,
        serializable=serializable,
        sort_order=rpc.RangeRequest.ASCEND,
        sort_target=rpc.RangeRequest.KEY,
    )
    if end is not None:
        request.range_end = end
    return request


def compare(kind: str, key: bytes, op: str, operand: Any) -> Any:
    """One txn compare; `operand` is already encoded for "value"."""
    tgt, field = _TARGET[kind]
    return rpc.Compare(result=_RESULT[op], target=tgt, key=key, **{field: operand})


def put_op(key: bytes, value: bytes, lease: int | None = None) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease or 0))


def delete_op(key: bytes, end: bytes | None = None) -> Any:
    request = rpc.DeleteRangeRequest(key=key)
    if end is not None:
        request.range_end = end
    return rpc.RequestOp(request_delete_range=request)


def get_op(key: bytes) -> Any:
    return rpc.RequestOp(request_range=rpc.RangeRequest(key=key))


class Channel:
    """One blocking channel to the current endpoint, shared by every thread
    (gRPC channels are thread-safe); `drop` makes the next call dial anew.

    A dropped channel is closed at once: the other threads' calls in flight on it
    fail then too, not each after its own timeout (a frozen etcd answers nobody).
    A call about to start on it fails at once without sending anything (a
    ValueError whose text varies by gRPC version); Store._unary dials anew then."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stubs: tuple[Any, Any] | None = None

    def stubs(self, endpoint: str) -> tuple[Any, Any, grpc.Channel]:
        """(KV stub, lease stub, the channel they use) for `endpoint`."""
        with self._lock:
            if self._channel is None or self._stubs is None:
                self._channel = grpc.insecure_channel(target(endpoint), options=_OPTIONS)
                self._stubs = (rpc.KVStub(self._channel), rpc.LeaseStub(self._channel))
            return self._stubs[0], self._stubs[1], self._channel

    def drop(self, channel: grpc.Channel | None = None) -> bool:
        """Close the channel (only if it is still `channel`, when given); True if it was."""
        with self._lock:
            if self._channel is None or (channel is not None and channel is not self._channel):
                return False
            old, self._channel, self._stubs = self._channel, None, None
        old.close()
        return True

    def current(self, channel: grpc.Channel) -> bool:
        """Whether `channel` is still the one calls are made on (not dropped)."""
        with self._lock:
            return channel is self._channel

    def close(self) -> None:
        """Close the channel (the store is closing)."""
        self.drop()
