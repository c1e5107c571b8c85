"""The web console: one local page and its assets (no CDN: a datacenter has no internet).

Everything under static/ ships in the package, vendored libraries included
(static/vendor/README.md says which, from where, under which licence)."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, send_from_directory

from corral.web.app import on_app, static_dir


@on_app
def add_console(app: Flask, node: Any) -> None:
    @app.route("/")
    def index() -> Response:
        resp = send_from_directory(static_dir(), "index.html")
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Content-Security-Policy"] = (
            # xterm.js writes its own <style> elements; WebSockets go to this origin only.
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
        )
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    @app.route("/static/<path:name>")
    def assets(name: str) -> Response:
        return send_from_directory(static_dir(), name)
