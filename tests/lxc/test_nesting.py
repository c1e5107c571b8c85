"""The nesting probe's report (issue 17 item 2), with a stand-in for the one tool
it runs, so the wording is checked on hosts where the kernel allows it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.lxc import nesting


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    nesting.unprivileged_problem.cache_clear()
    yield
    nesting.unprivileged_problem.cache_clear()


def _tool(path: Path, code: int, stderr: str) -> None:
    path.write_text(f"#!/bin/sh\necho '{stderr}' >&2\nexit {code}\n")
    path.chmod(0o755)


def test_refusal_names_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    _tool(tmp_path / "unshare", 1, "unshare: mount /proc failed: Operation not permitted")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(nesting, "host_container", lambda: "lxc")
    monkeypatch.setattr(nesting, "proc_overmounts", lambda: ["/proc/sys/kernel/random/boot_id"])
    problem = nesting.unprivileged_problem()
    assert problem is not None
    assert "unprivileged containers need to mount a fresh proc" in problem
    assert "this host is itself a container (lxc)" in problem
    assert "/proc/sys/kernel/random/boot_id" in problem
    assert "Operation not permitted" in problem and "unprivileged=0" in problem


def test_success_is_no_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    _tool(tmp_path / "unshare", 0, "")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert nesting.unprivileged_problem() is None
