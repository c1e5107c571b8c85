"""Changing the HA configuration: resources, rules, CRM requests (the API's and
CLI's rules, written once). Each change is one compare-and-swap on its key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from corral.cluster import keys
from corral.cluster.errors import Conflict, NotFound, ParamError
from corral.cluster.ha.env import RESOURCES, RULES, HAState, StoreLike
from corral.cluster.ha.model import (
    Resource,
    Rule,
    check_rules,
    parse_sid,
    resource_from,
    rule_from,
    sid_of,
)

RESOURCE_DEFAULTS = {"max_restart", "max_relocate", "failback", "comment", "state"}
RULE_OPTIONAL = {"comment", "disable", "strict", "nodes", "affinity"}


def digest(value: Any) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _check_digest(current: dict[str, Any], given: str | None) -> None:
    if given and given != digest(current):
        raise Conflict("detected modified configuration - file changed by other user? Try again.")


def normalize_sid(value: Any) -> str:
    return sid_of(*parse_sid(value))


def _guest_matches(store: StoreLike, sid: str) -> None:
    kind, vmid = parse_sid(sid)
    rec = store.get_value(keys.guest(vmid))
    if rec is None:
        raise ParamError.one("sid", f"no such guest {vmid}")
    if (rec.get("type") == "lxc") != (kind == "ct"):
        actual = "ct" if rec.get("type") == "lxc" else "vm"
        raise ParamError.one("sid", f"guest {vmid} is a {actual}, not a {kind}")


def get_resource(store: StoreLike, sid: Any) -> dict[str, Any]:
    sid = normalize_sid(sid)
    raw = store.get_value(RESOURCES + sid)
    if raw is None:
        raise NotFound(f"no such resource '{sid}'")
    return {**raw, "digest": digest(raw)}


def add_resource(store: StoreLike, params: dict[str, Any]) -> Resource:
    res = resource_from(params)
    _guest_matches(store, res.sid)
    if not store.create(RESOURCES + res.sid, res.to_dict()):
        raise Conflict(f"resource ID '{res.sid}' already defined")
    return res


def update_resource(
    store: StoreLike,
    sid: Any,
    params: dict[str, Any],
    *,
    delete: list[str] = (),  # type: ignore[assignment]
    digest_: str | None = None,
) -> Resource:
    sid = normalize_sid(sid)
    for name in delete:
        if name not in RESOURCE_DEFAULTS:
            raise ParamError.one("delete", f"cannot delete '{name}'")
    kv = store.get(RESOURCES + sid)
    if kv is None:
        raise NotFound(f"no such resource '{sid}'")
    _check_digest(kv.value, digest_)
    base = {k: v for k, v in kv.value.items() if k not in delete}
    res = resource_from({**base, **params, "sid": sid})
    if not store.replace(RESOURCES + sid, res.to_dict(), mod_revision=kv.mod_revision):
        raise Conflict(f"resource '{sid}' changed meanwhile; try again")
    return res


def remove_resource(store: StoreLike, sid: Any, *, purge: bool = True) -> None:
    sid = normalize_sid(sid)
    if not store.delete(RESOURCES + sid):
        raise NotFound(f"no such resource '{sid}'")
    if not purge:
        return
    for kv in store.range(RULES):
        rule = kv.value
        left = [s for s in str(rule.get("resources", "")).split(",") if s and s != sid]
        if len(left) == len(str(rule.get("resources", "")).split(",")):
            continue
        minimum = 2 if rule.get("type") == "resource-affinity" else 1
        if len(left) < minimum:
            store.delete(kv.key, mod_revision=kv.mod_revision)
        else:
            store.replace(
                kv.key, {**rule, "resources": ",".join(left)}, mod_revision=kv.mod_revision
            )


def get_rule(store: StoreLike, rule: str) -> dict[str, Any]:
    raw = store.get_value(RULES + rule)
    if raw is None:
        raise NotFound(f"no such rule '{rule}'")
    return {**raw, "digest": digest(raw)}


def _write_rule(store: StoreLike, new: Rule, *, mod_revision: int) -> None:
    others = [r for r in HAState(store).rules() if r.rule != new.rule]
    check_rules([*others, new])
    if not store.replace(RULES + new.rule, new.to_dict(), mod_revision=mod_revision):
        if mod_revision == 0:
            raise Conflict(f"rule '{new.rule}' already defined")
        raise Conflict(f"rule '{new.rule}' changed meanwhile; try again")


def add_rule(store: StoreLike, params: dict[str, Any]) -> Rule:
    new = rule_from(params)
    _write_rule(store, new, mod_revision=0)
    return new


def update_rule(
    store: StoreLike,
    rule: str,
    params: dict[str, Any],
    *,
    delete: list[str] = (),  # type: ignore[assignment]
    digest_: str | None = None,
) -> Rule:
    kv = store.get(RULES + rule)
    if kv is None:
        raise NotFound(f"no such rule '{rule}'")
    _check_digest(kv.value, digest_)
    for name in delete:
        if name not in RULE_OPTIONAL:
            raise ParamError.one("delete", f"cannot delete '{name}'")
    if params.get("type") not in (None, kv.value["type"]):
        raise ParamError.one("type", "the type of a rule cannot change")
    base = {k: v for k, v in kv.value.items() if k not in delete}
    new = rule_from({**base, **params, "rule": rule})
    _write_rule(store, new, mod_revision=kv.mod_revision)
    return new


def delete_rule(store: StoreLike, rule: str) -> None:
    if not store.delete(RULES + rule):
        raise NotFound(f"no such rule '{rule}'")


def request_move(store: StoreLike, sid: Any, kind: str, node: str) -> str:
    """Queue `migrate`/`relocate` of `sid` to `node` for the CRM."""
    sid = normalize_sid(sid)
    if store.get(RESOURCES + sid) is None:
        raise NotFound(f"no such resource '{sid}'")
    if store.get(keys.node_info(node)) is None:
        raise ParamError.one("node", f"no such node '{node}'")
    HAState(store).queue_command(f"{kind} {sid} {node}")
    return sid


def request_maintenance(store: StoreLike, node: str, *, enable: bool) -> None:
    if store.get(keys.node_info(node)) is None:
        raise ParamError.one("node", f"no such node '{node}'")
    verb = "enable" if enable else "disable"
    HAState(store).queue_command(f"{verb}-node-maintenance {node}")
