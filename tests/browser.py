"""Headless Chromium (Debian's, never a downloaded one) and the screenshot folder, for
every browser test: tests/web/test_console_browser.py and the lab's tests/lab/test_lab_console.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
NEEDS_CHROMIUM = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"
)


@contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield b
        finally:
            b.close()


def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # pytest keeps only its last few tmp dirs: CORRAL_SCREENSHOTS keeps them elsewhere.
    keep = os.environ.get("CORRAL_SCREENSHOTS")
    path = Path(keep) if keep else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {path}")
    return path


@contextmanager
def new_page(browser: Any, width: int = 1280, height: int = 860) -> Iterator[Any]:
    """A fresh context and page; asserts afterwards that no script error went uncaught."""
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": width, "height": height})
    page = ctx.new_page()
    page.set_default_timeout(30000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        yield page
    finally:
        ctx.close()
    assert not errors, errors


def log_in(page: Any, url: str, password: str, node: str = "node1") -> None:
    page.goto(url + "/")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_selector(f"#tree a[data-id='node/{node}']", state="attached")


def shot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"{name}.png"), full_page=False)
