"""Every parameter Proxmox defines for a method corral implements is accepted.

Compared with the Proxmox API schema (shared/reference, read at test time and
never copied into the repository): each is declared by the endpoint, by the
guest driver's config schema, or as ignored/refused-with-reason
(corral.web.pve_compat, the drivers' PVE_ONLY keys) with Proxmox's type.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from corral.cluster.errors import ParamError
from corral.cluster.schema import Schema, ignored, ignored_notes, track_ignored, unsupported
from corral.kvm import config as kvm_config
from corral.lxc import config as lxc_config
from corral.web import api, pve_compat
from corral.web.app import load_endpoint_modules
from tests import pve_reference

GUEST_PATH = re.compile(r"^/nodes/\{node\}/(lxc|qemu)(/|$)")
# Modules outside the guest API checked here; newer endpoint modules get their lists
# when their authors add them.
CHECKED_MODULES = {
    "corral.web.api_core",
    "corral.web.api_access",
    "corral.web.api_tasks",
    "corral.web.api_cluster",
    "corral.web.api_node_info",
    "corral.web.api_backup_info",
    "corral.web.api_rrd",
    "corral.web.api_metric_servers",
    "corral.web.api_node_system",
    "corral.web.api_storage_download",
}
# Methods outside the guest API whose Proxmox options corral does not take yet.
KNOWN_GAPS = {
    ("POST", "/access/ticket"): {"tfa-challenge"},
    ("GET", "/access/users"): {"enabled", "full"},
    ("POST", "/access/users"): {"keys"},
    ("PUT", "/access/users/{userid}"): {"keys"},
    ("PUT", "/access/password"): {"confirmation-password"},
    ("PUT", "/access/acl"): {"delete", "groups"},
    ("GET", "/nodes/{node}/tasks"): {"since", "statusfilter", "until"},
    ("GET", "/nodes/{node}/tasks/{upid}/log"): {"download"},
    ("POST", "/nodes/{node}/storage/{storage}/upload"): {
        "checksum", "checksum-algorithm", "content", "filename", "tmpfilename",
    },
    ("POST", "/cluster/config"): {"nodeid", "token-coefficient", "votes"},
    ("GET", "/cluster/config/join"): {"node"},
    ("POST", "/cluster/config/nodes/{node}"): {
        "apiversion", "force", "link[n]", "new_node_ip", "nodeid", "votes",
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def endpoints() -> list[api.Endpoint]:
    load_endpoint_modules()
    return api.ENDPOINTS


def _checked_guest(ep: api.Endpoint) -> bool:
    return ep.handler.__module__ in {
        "corral.web.api_guests",
        "corral.web.api_migrate",
        "corral.web.api_snapshots",
        "corral.web.api_clones",
    }


def _config_schema(ep: api.Endpoint) -> Schema | None:
    if not ep.params.additional:
        return None
    match = GUEST_PATH.match(ep.path)
    if match is None:
        return None
    return lxc_config.SCHEMA if match.group(1) == "lxc" else kvm_config.SCHEMA


def _missing(ep: api.Endpoint) -> set[str]:
    have = set(ep.params.props)
    schema = _config_schema(ep)
    if schema is not None:
        have |= set(schema.props)
    out = set()
    for name in pve_reference.parameters(ep.method, ep.path):
        if name in have:
            continue
        if name.endswith("[n]") and any(
            re.fullmatch(re.escape(name[:-3]) + r"\d+", h) for h in have
        ):
            continue
        out.add(name)
    return out


def test_guest_methods_accept_every_proxmox_parameter(endpoints: list[api.Endpoint]) -> None:
    ref = pve_reference.methods()
    checked = 0
    missing = {}
    for ep in endpoints:
        if (ep.method, ep.path) in ref and GUEST_PATH.match(ep.path) and _checked_guest(ep):
            checked += 1
            if gap := _missing(ep):
                missing[f"{ep.method} {ep.path}"] = sorted(gap)
    assert checked > 20
    assert not missing, missing


def test_other_methods_miss_no_more_than_the_known_gaps(endpoints: list[api.Endpoint]) -> None:
    ref = pve_reference.methods()
    new = {}
    for ep in endpoints:
        key = (ep.method, ep.path)
        if key in ref and ep.handler.__module__ in CHECKED_MODULES:
            if gap := _missing(ep) - KNOWN_GAPS.get(key, set()):
                new[f"{ep.method} {ep.path}"] = sorted(gap)
    assert not new, new


def _ref_type(method: str, path: str, name: str) -> str | None:
    params = pve_reference.parameters(method, path)
    indexed = re.sub(r"\d+$", "[n]", name)
    found = params.get(name) or params.get(indexed)
    return None if found is None else str(found["type"])


def test_ignored_method_options_are_proxmox_options_of_that_method() -> None:
    for (method, path), params in pve_compat.METHODS.items():
        assert (method, path) in pve_reference.methods(), (method, path)
        for name, param in params.items():
            assert param.ignore, (method, path, name)
            assert _ref_type(method, path, name) == param.type, (method, path, name)


@pytest.mark.parametrize("module,type", [(lxc_config, "lxc"), (kvm_config, "qemu")])
def test_ignored_config_keys_are_proxmox_config_keys(module: Any, type: str) -> None:
    for name, param in module.PVE_ONLY.items():
        assert param.ignore
        assert module.CONFIG[name] is param, f"{name} is implemented: drop it from PVE_ONLY"
        assert _ref_type("POST", f"/nodes/{{node}}/{type}", name) == param.type, name


def test_ignored_parameters_are_dropped_noted_or_refused_with_the_reason() -> None:
    schema = Schema(
        {
            "force": ignored("boolean", "Overwrite.", "never overwrites", noop=(0,)),
            "debug": ignored("boolean", "Verbose.", "logs as configured"),
            "hostpci0": unsupported("string", "PCI device.", "no passthrough"),
        }
    )
    track_ignored()
    assert schema.validate({"force": "0", "debug": "1"}) == {}
    notes = ignored_notes()
    assert any("force=0: never overwrites" in n for n in notes)
    assert any("debug=1" in n for n in notes)
    with pytest.raises(ParamError) as err:
        schema.validate({"force": "1", "hostpci0": "0000:01:00.0", "debug": "maybe"})
    errors = err.value.errors
    assert "never overwrites" in errors["force"]
    assert "no passthrough" in errors["hostpci0"]
    assert "boolean" in errors["debug"]  # a wrong type is refused as Proxmox refuses it
    track_ignored()
    assert ignored_notes() == []
