"""Routing: a concrete path finds its template through an index of the endpoints."""

from __future__ import annotations

import re

import pytest

from corral.web import api
from corral.web.app import load_endpoint_modules

load_endpoint_modules()

SAMPLES = {"volume": "local:100/vm-100-disk-0.raw", "node": "n1", "vmid": "100"}


def _concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLES.get(m.group(1), "x1"), template)


def _linear(clean: str) -> str | None:
    """The template as a scan of every endpoint finds it: what the index must agree with."""
    best: api.Endpoint | None = None
    for ep in api.ENDPOINTS:
        if ep.regex.match(clean) and (best is None or api._literals(ep) > api._literals(best)):
            best = ep
    return None if best is None else best.path


def test_every_endpoint_routes_through_the_index_as_a_full_scan_would() -> None:
    assert len(api.ENDPOINTS) > 150
    for ep in api.ENDPOINTS:
        path = _concrete(ep.path)
        found, params = api.route(ep.method, path)
        assert found.path == _linear(path), path
        assert set(params) == set(ep.path_params)
    # A volume ID with slashes, with and without a literal tail.
    volume = "/nodes/n1/storage/local/content/local:100/vm-100-disk-0.raw"
    assert api.route("GET", volume)[0].path == _linear(volume)


def test_unknown_paths_and_methods_are_not_implemented() -> None:
    for method, path in (("GET", "/nodes/n1/nothing/here"), ("PATCH", "/version"),
                         ("GET", "/no-such-root")):  # fmt: skip
        with pytest.raises(api.NotImplementedPath):
            api.route(method, path)


def test_endpoints_registered_later_are_routed() -> None:
    @api.endpoint("GET", "/cluster/test-routing-late/{id}")
    def late(ctx: api.Ctx, id: str) -> str:
        return id

    try:
        assert api.route("GET", "/cluster/test-routing-late/7")[0].handler is late
    finally:
        api.ENDPOINTS.pop()
        api._index = None
