"""The web console in a real headless Chromium: log in, see the cluster, watch a task."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.util import Corrald

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
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
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(ignore_https_errors=True)
    pg = ctx.new_page()
    pg.set_default_timeout(20000)
    yield pg
    ctx.close()


def test_login_shows_the_node_and_refuses_bad_passwords(corrald: Corrald, page: Any) -> None:
    page.goto(corrald.url + "/")
    page.fill("input[name=username]", "admin@pve")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:has-text('authentication failure')")
    page.fill("input[name=password]", corrald.password)
    page.click("button[type=submit]")
    row = page.wait_for_selector("#resources tr[data-id='node/node1']")
    assert "online" in row.inner_text()
    assert "quorate" in page.inner_text("#cluster")


def test_every_request_stays_on_the_node_and_logout_works(corrald: Corrald, page: Any) -> None:
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    page.goto(corrald.url + "/")
    page.fill("input[name=password]", corrald.password)
    page.click("button[type=submit]")
    page.wait_for_selector("#resources tr[data-id='node/node1']")
    page.click("nav button[data-view=tasks]")
    page.wait_for_selector("#tasks:not([hidden])")
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    assert urls and all(u.startswith(corrald.url + "/") for u in urls), urls
