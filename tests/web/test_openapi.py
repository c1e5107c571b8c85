"""The OpenAPI document tells the truth about the API (unit level).

The schemathesis run against a real corrald is tests/clients/test_schemathesis.py;
these pin what it relies on: every named format's pattern only generates values
the format's validator accepts, path parameters carry patterns, declared
statuses, POST /storage's options.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.cluster.schema import FORMAT_PATTERNS, FORMATS
from corral.web.app import load_endpoint_modules
from corral.web.openapi import document


@pytest.mark.parametrize("name", sorted(FORMAT_PATTERNS))
def test_format_patterns_generate_only_valid_values(name: str) -> None:
    pattern = FORMAT_PATTERNS[name]
    assert pattern.startswith("^") and pattern.endswith("$")

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.from_regex(pattern, fullmatch=True))
    def check(value: str) -> None:
        FORMATS[name](value)

    check()


@pytest.fixture(scope="module")
def doc() -> dict:
    load_endpoint_modules()
    return document()


def test_every_path_parameter_can_be_generated(doc: dict) -> None:
    loose = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                schema = p["schema"]
                if (
                    p["in"] == "path"
                    and schema["type"] == "string"
                    and "pattern" not in schema
                    and "enum" not in schema
                ):
                    loose.append(f"{method.upper()} {path} {p['name']}")
    assert not loose, loose


def test_errors_are_declared(doc: dict) -> None:
    op = doc["paths"]["/api2/json/nodes/{node}/lxc/{vmid}/config"]["get"]
    assert {"400", "401", "403", "404", "409", "503"} <= set(op["responses"])
    assert (
        "message" in op["responses"]["404"]["content"]["application/json"]["schema"]["properties"]
    )


def test_storage_creation_declares_every_plugin_option(doc: dict) -> None:
    body = doc["paths"]["/api2/json/storage"]["post"]["requestBody"]["content"]
    schema = body["application/x-www-form-urlencoded"]["schema"]
    props = schema["properties"]
    assert {"dir", "btrfs", "lvm", "lvmthin", "zfspool", "rbd"} <= set(props["type"]["enum"])
    assert {"path", "vgname", "thinpool", "pool", "monhost", "content", "nodes"} <= set(props)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"storage", "type"}


def test_guest_creation_declares_the_config_keys(doc: dict) -> None:
    body = doc["paths"]["/api2/json/nodes/{node}/lxc"]["post"]["requestBody"]["content"]
    props = body["application/json"]["schema"]["properties"]
    assert {"vmid", "ostemplate", "rootfs", "net0", "memory", "force", "ha-managed"} <= set(props)
    assert re.search("no effect", props["ha-managed"]["description"])
