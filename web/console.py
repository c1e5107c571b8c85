"""The web console: one local page (no CDN: a datacenter has no internet)."""

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
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'"
        )
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    @app.route("/static/<path:name>")
    def assets(name: str) -> Response:
        return send_from_directory(static_dir(), name)
