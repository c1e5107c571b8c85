"""Time for the cluster code: a real clock, and a virtual one for simulations.

Cluster logic (tasks, leases, the guest flow, node loops) reads the time,
sleeps, arms timers and runs background work through a `Clock` instead of the
`time` and `threading` modules, so the same code runs in a daemon
(`RealClock`) and in a deterministic test or simulator (`VirtualClock`).

`VirtualClock` runs no threads at all. Timers, "soon" callbacks and executor
work are kept in one queue ordered by (due time, arming order) and run only
when the driver of the simulation calls `advance(dt)`, `run_pending()` or
`sleep(dt)`, on the caller's thread. `sleep` inside a callback advances the
virtual time and runs what falls due meanwhile (re-entrantly), which is how a
task that waits for another node's task makes progress without a thread.

Public API (stable; the HA simulator builds on it):

    Clock.time() / monotonic() / sleep(s) / call_later(s, fn) -> Timer
    Clock.call_soon(fn) -> Timer / spawn(fn, name=) / executor(workers, name=)
    Clock.wait(event, timeout) -> bool
    VirtualClock(start=..., wall=...).advance(s) / run_pending() / pending()
    VirtualClock.run_until(predicate, timeout=) -> bool
"""

from __future__ import annotations

import abc
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Timer(Protocol):
    def cancel(self) -> None: ...


class Executor(Protocol):
    """The part of concurrent.futures.Executor the cluster code uses."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...


class Clock(abc.ABC):
    """Where cluster code gets its time, sleeps, timers and background work."""

    @abc.abstractmethod
    def time(self) -> float:
        """Wall-clock seconds since the epoch (for records: starttime, endtime)."""

    @abc.abstractmethod
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for deadlines and ages)."""

    @abc.abstractmethod
    def sleep(self, seconds: float) -> None: ...

    @abc.abstractmethod
    def call_later(self, delay: float, fn: Callable[[], Any]) -> Timer:
        """Run `fn` once after `delay` seconds, unless the returned timer is cancelled."""

    def call_soon(self, fn: Callable[[], Any]) -> Timer:
        return self.call_later(0.0, fn)

    @abc.abstractmethod
    def spawn(self, fn: Callable[[], Any], *, name: str) -> None:
        """Run `fn` concurrently with the caller (a thread, or a queued callback)."""

    @abc.abstractmethod
    def executor(self, workers: int, *, name: str) -> Executor: ...

    @abc.abstractmethod
    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        """Wait until `event` is set or `timeout` passes; True when it is set."""


class RealClock(Clock):
    """The machine's clocks; timers and background work are daemon threads."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Timer:
        timer = threading.Timer(max(0.0, delay), _logged(fn))
        timer.daemon = True
        timer.start()
        return timer

    def spawn(self, fn: Callable[[], Any], *, name: str) -> None:
        threading.Thread(target=fn, name=name, daemon=True).start()

    def executor(self, workers: int, *, name: str) -> Executor:
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        return event.wait(timeout)


REAL = RealClock()


def _logged(fn: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - a failing timer must not kill its runner
            log.exception("timer callback %r failed", fn)

    return run


class _VirtualTimer:
    __slots__ = ("due", "fn", "cancelled")

    def __init__(self, due: float, fn: Callable[[], Any]) -> None:
        self.due = due
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _InlineExecutor:
    """Executor whose work items run as callbacks of a virtual clock."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> None:
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        self.clock.call_soon(lambda: None if self.closed else fn(*args))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.closed = True


class VirtualClock(Clock):
    """Deterministic time: nothing happens until the test advances the clock.

    Callbacks that raise are logged and kept in `errors` (a simulation checks
    it is empty), so one failing callback cannot stop the others.
    """

    def __init__(self, start: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._queue: list[tuple[float, int, _VirtualTimer]] = []
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self.errors: list[BaseException] = []

    # -- reading ------------------------------------------------------------------
    def time(self) -> float:
        return self._now + self._wall_offset

    def monotonic(self) -> float:
        return self._now

    def pending(self) -> int:
        """How many live timers/callbacks are queued."""
        with self._lock:
            return sum(1 for _, _, t in self._queue if not t.cancelled)

    def next_due(self) -> float | None:
        with self._lock:
            self._drop_cancelled()
            return self._queue[0][0] if self._queue else None

    # -- scheduling ---------------------------------------------------------------
    def call_later(self, delay: float, fn: Callable[[], Any]) -> Timer:
        with self._lock:
            timer = _VirtualTimer(self._now + max(0.0, delay), fn)
            heapq.heappush(self._queue, (timer.due, next(self._seq), timer))
            return timer

    def spawn(self, fn: Callable[[], Any], *, name: str) -> None:
        self.call_soon(fn)

    def executor(self, workers: int, *, name: str) -> Executor:
        return _InlineExecutor(self)

    # -- running ------------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        while self._queue and self._queue[0][2].cancelled:
            heapq.heappop(self._queue)

    def _run_one(self, limit: float) -> bool:
        """Run the earliest callback due at or before `limit`; False if there is none."""
        with self._lock:
            self._drop_cancelled()
            if not self._queue or self._queue[0][0] > limit:
                return False
            due, _, timer = heapq.heappop(self._queue)
            self._now = max(self._now, due)
        try:
            timer.fn()
        except Exception as err:  # noqa: BLE001 - recorded for the simulation to check
            log.exception("virtual timer callback %r failed", timer.fn)
            self.errors.append(err)
        return True

    def advance(self, seconds: float = 0.0) -> None:
        """Move time forward by `seconds`, running every callback that falls due, in order."""
        target = self._now + max(0.0, seconds)
        while self._run_one(target):
            pass
        self._now = max(self._now, target)

    def run_pending(self) -> None:
        """Run what is due now (and what that schedules for now), without moving time."""
        self.advance(0.0)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def run_until(
        self, predicate: Callable[[], bool], *, timeout: float = 3600.0, step: float | None = None
    ) -> bool:
        """Advance until `predicate()` holds (checked after each callback); False on timeout.

        With `step`, time moves in steps of that size even when nothing is
        queued (for code that polls); otherwise it jumps to the next due callback.
        """
        deadline = self._now + timeout
        while not predicate():
            if self._run_one(self._now):
                continue
            nxt = self.next_due()
            if step is not None:
                nxt = self._now + step if nxt is None else min(nxt, self._now + step)
            if nxt is None or nxt > deadline:
                self._now = max(self._now, deadline)
                return predicate()
            self.advance(nxt - self._now)
        return True

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        self.run_until(event.is_set, timeout=3600.0 if timeout is None else timeout)
        return event.is_set()
