"""HA resources and rules as Proxmox VE 9 users know them, validated once.

A resource is `vm:ID` or `ct:ID` with a requested `state` (started, stopped,
disabled, ignored), `max_restart`, `max_relocate`, `failback` and a
`comment`. Rules are either `node-affinity` (resources, `nodes` with optional
priorities `node1:2,node2`, `strict`) or `resource-affinity` (resources kept
`positive` = together or `negative` = apart). Validation raises ParamError
naming the parameter, so the API answers 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from corral.cluster.errors import ParamError

REQUESTED_STATES = ("started", "stopped", "disabled", "ignored")
SHUTDOWN_POLICIES = ("freeze", "failover", "migrate", "conditional")
SID_RE = re.compile(r"^(vm|ct):(\d+)$")
RULE_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{1,63}$")
NODE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")

DEFAULT_MAX_RESTART = 1
DEFAULT_MAX_RELOCATE = 1


def parse_sid(value: Any, *, param: str = "sid") -> tuple[str, int]:
    """'vm:100' / 'ct:100' -> ('vm', 100); a bare '100' means vm like ha-manager."""
    text = str(value).strip()
    if text.isdigit():
        text = f"vm:{text}"
    m = SID_RE.match(text)
    if not m or not 100 <= int(m.group(2)) <= 999_999_999:
        raise ParamError.one(param, f"invalid HA resource ID '{value}' (expected vm:ID or ct:ID)")
    return m.group(1), int(m.group(2))


def sid_of(kind: str, vmid: int) -> str:
    return f"{'ct' if kind in ('ct', 'lxc') else 'vm'}:{vmid}"


def _int(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ParamError.one(name, f"value '{raw}' is not an integer") from None
    if not lo <= value <= hi:
        raise ParamError.one(name, f"value must be between {lo} and {hi}")
    return value


def _bool(params: dict[str, Any], name: str, default: bool) -> bool:
    raw = params.get(name, default)
    if isinstance(raw, bool):
        return raw
    if str(raw) in ("1", "true", "yes", "on"):
        return True
    if str(raw) in ("0", "false", "no", "off"):
        return False
    raise ParamError.one(name, f"value '{raw}' is not a boolean")


@dataclass(frozen=True)
class Resource:
    sid: str
    state: str = "started"
    max_restart: int = DEFAULT_MAX_RESTART
    max_relocate: int = DEFAULT_MAX_RELOCATE
    failback: bool = True
    comment: str = ""

    @property
    def kind(self) -> str:
        return self.sid.split(":")[0]

    @property
    def vmid(self) -> int:
        return int(self.sid.split(":")[1])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sid": self.sid,
            "type": self.kind,
            "state": self.state,
            "max_restart": self.max_restart,
            "max_relocate": self.max_relocate,
            "failback": int(self.failback),
        }
        if self.comment:
            out["comment"] = self.comment
        return out


def resource_from(params: dict[str, Any], *, base: Resource | None = None) -> Resource:
    """Build (or update `base` with) a validated resource from API/CLI params."""
    merged: dict[str, Any] = {} if base is None else base.to_dict()
    merged.update({k: v for k, v in params.items() if v is not None})
    kind, vmid = parse_sid(merged.get("sid", ""))
    state = str(merged.get("state", "started"))
    if state == "enabled":  # ha-manager's old name for started
        state = "started"
    if state not in REQUESTED_STATES:
        raise ParamError.one(
            "state", f"value '{state}' is not one of {', '.join(REQUESTED_STATES)}"
        )
    comment = str(merged.get("comment", ""))
    if len(comment) > 4096 or "\n" in comment:
        raise ParamError.one("comment", "must be one line of at most 4096 characters")
    return Resource(
        sid=f"{kind}:{vmid}",
        state=state,
        max_restart=_int(merged, "max_restart", DEFAULT_MAX_RESTART, 0, 10),
        max_relocate=_int(merged, "max_relocate", DEFAULT_MAX_RELOCATE, 0, 10),
        failback=_bool(merged, "failback", True),
        comment=comment,
    )


def parse_node_priorities(value: Any, *, param: str = "nodes") -> dict[str, int]:
    """'node1:2,node2' -> {'node1': 2, 'node2': 0} (Proxmox: higher wins, default 0)."""
    out: dict[str, int] = {}
    items = value if isinstance(value, list) else str(value).split(",")
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        name, _, prio = item.partition(":")
        if not NODE_RE.match(name):
            raise ParamError.one(param, f"invalid node name '{name}'")
        try:
            priority = int(prio) if prio else 0
        except ValueError:
            raise ParamError.one(param, f"invalid priority '{prio}' for node '{name}'") from None
        if not 0 <= priority <= 1000:
            raise ParamError.one(param, f"priority of '{name}' must be between 0 and 1000")
        out[name] = priority
    if not out:
        raise ParamError.one(param, "at least one node is required")
    return out


def parse_resource_list(value: Any, *, param: str = "resources") -> list[str]:
    items = value if isinstance(value, list) else str(value).split(",")
    out: list[str] = []
    for item in items:
        if str(item).strip():
            sid = sid_of(*parse_sid(item, param=param))
            if sid not in out:
                out.append(sid)
    if not out:
        raise ParamError.one(param, "at least one resource is required")
    return out


@dataclass(frozen=True)
class Rule:
    rule: str
    type: str  # node-affinity | resource-affinity
    resources: tuple[str, ...]
    nodes: dict[str, int] = field(default_factory=dict)  # node-affinity
    strict: bool = False  # node-affinity
    affinity: str = ""  # resource-affinity: positive | negative
    disable: bool = False
    comment: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule,
            "type": self.type,
            "resources": ",".join(self.resources),
        }
        if self.type == "node-affinity":
            out["nodes"] = ",".join(f"{n}:{p}" if p else n for n, p in self.nodes.items())
            out["strict"] = int(self.strict)
        else:
            out["affinity"] = self.affinity
        if self.disable:
            out["disable"] = 1
        if self.comment:
            out["comment"] = self.comment
        return out


def rule_from(params: dict[str, Any], *, base: Rule | None = None) -> Rule:
    merged: dict[str, Any] = {} if base is None else base.to_dict()
    merged.update({k: v for k, v in params.items() if v is not None})
    rid = str(merged.get("rule", ""))
    if not RULE_ID_RE.match(rid):
        raise ParamError.one("rule", f"invalid rule ID '{rid}'")
    kind = str(merged.get("type", ""))
    resources = tuple(parse_resource_list(merged.get("resources", "")))
    disable = _bool(merged, "disable", False)
    comment = str(merged.get("comment", ""))
    if kind == "node-affinity":
        return Rule(
            rid,
            kind,
            resources,
            disable=disable,
            comment=comment,
            nodes=parse_node_priorities(merged.get("nodes", "")),
            strict=_bool(merged, "strict", False),
        )
    if kind == "resource-affinity":
        affinity = str(merged.get("affinity", ""))
        if affinity not in ("positive", "negative"):
            raise ParamError.one("affinity", "must be 'positive' (together) or 'negative' (apart)")
        if len(resources) < 2:
            raise ParamError.one("resources", "a resource-affinity rule needs two resources")
        return Rule(rid, kind, resources, affinity=affinity, disable=disable, comment=comment)
    raise ParamError.one("type", f"value '{kind}' is not node-affinity or resource-affinity")


def check_rules(rules: list[Rule]) -> None:
    """Rules that contradict each other are refused (Proxmox drops them at runtime;
    refusing them at write time tells the user at once)."""
    seen: dict[str, str] = {}
    for r in rules:
        if r.type != "node-affinity" or r.disable:
            continue
        for sid in r.resources:
            if sid in seen:
                raise ParamError.one(
                    "resources", f"'{sid}' is already in node-affinity rule '{seen[sid]}'"
                )
            seen[sid] = r.rule
    together: dict[str, set[str]] = {}
    for r in rules:
        if r.type == "resource-affinity" and not r.disable and r.affinity == "positive":
            for sid in r.resources:
                together.setdefault(sid, set()).update(r.resources)
    for r in rules:
        if r.type == "resource-affinity" and not r.disable and r.affinity == "negative":
            for a in r.resources:
                for b in r.resources:
                    if a != b and b in together.get(a, set()):
                        raise ParamError.one(
                            "resources", f"'{a}' and '{b}' are both kept together and apart"
                        )


def settings_from(params: dict[str, Any]) -> dict[str, Any]:
    """The cluster-wide HA settings (datacenter.cfg's `ha: shutdown_policy=...`)."""
    policy = str(params.get("shutdown_policy", "conditional"))
    if policy not in SHUTDOWN_POLICIES:
        raise ParamError.one(
            "shutdown_policy", f"value '{policy}' is not one of {', '.join(SHUTDOWN_POLICIES)}"
        )
    return {"shutdown_policy": policy}
