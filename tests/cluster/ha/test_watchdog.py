"""The fencing watchdog as a real process killing real processes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from corral.cluster.ha.watchdog import WatchdogClient


@pytest.fixture
def guest() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait(timeout=5)


@pytest.fixture
def wd() -> Iterator[WatchdogClient]:
    client = WatchdogClient()
    yield client
    client.close()


def _dead_within(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_kills_registered_guests_when_not_fed(
    wd: WatchdogClient, guest: subprocess.Popen[bytes]
) -> None:
    wd.feed(time.monotonic() + 0.3, {"ct:100": guest.pid})
    assert _dead_within(guest, 5)
    assert guest.returncode == -9


def test_keeps_guests_while_fed(wd: WatchdogClient, guest: subprocess.Popen[bytes]) -> None:
    for _ in range(8):
        wd.feed(time.monotonic() + 0.4, {"ct:100": guest.pid})
        time.sleep(0.1)
    wd.disarm()
    assert not _dead_within(guest, 0.8)


def test_a_started_guest_is_killed_without_a_new_feed(
    wd: WatchdogClient, guest: subprocess.Popen[bytes]
) -> None:
    wd.feed(time.monotonic() + 0.5, {})
    wd.add("vm:101", guest.pid)  # started after the last feed: still fenced
    assert _dead_within(guest, 5)


def test_honours_the_deadline_when_the_daemon_is_gone(guest: subprocess.Popen[bytes]) -> None:
    wd = WatchdogClient()
    wd.feed(time.monotonic() + 0.5, {"ct:100": guest.pid})
    proc = wd.proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()  # corrald died: its end of the pipe closes
    assert _dead_within(guest, 5)
    proc.wait(timeout=5)  # and the watchdog then exits by itself


def test_disarm_spares_guests(wd: WatchdogClient, guest: subprocess.Popen[bytes]) -> None:
    wd.feed(time.monotonic() + 0.3, {"ct:100": guest.pid})
    wd.disarm()
    assert not _dead_within(guest, 1.0)
