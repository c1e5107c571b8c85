"""Where a service may and should run: node affinity, resource affinity, failback.

Pure functions of their inputs (no store, no clock), so the CRM, the API's
checks and the tests share them.
"""

from __future__ import annotations

from collections.abc import Iterable

from corral.cluster.ha.model import Rule


def node_affinity(sid: str, rules: Iterable[Rule]) -> Rule | None:
    for r in rules:
        if r.type == "node-affinity" and not r.disable and sid in r.resources:
            return r
    return None


def affine(sid: str, rules: Iterable[Rule], affinity: str) -> set[str]:
    """Services kept together with (positive) or apart from (negative) `sid`."""
    out: set[str] = set()
    for r in rules:
        if (
            r.type == "resource-affinity"
            and not r.disable
            and r.affinity == affinity
            and sid in r.resources
        ):
            out.update(s for s in r.resources if s != sid)
    return out


def allowed_nodes(sid: str, online: Iterable[str], rules: list[Rule]) -> dict[str, int]:
    """Online nodes the service may run on, with their priority.

    A strict node-affinity rule allows only its nodes; a non-strict one prefers
    them and falls back to every online node when none of them is online.
    """
    online = sorted(set(online))
    rule = node_affinity(sid, rules)
    if rule is None:
        return {n: 0 for n in online}
    mine = {n: p for n, p in rule.nodes.items() if n in online}
    if mine or rule.strict:
        return mine
    return {n: 0 for n in online}


def select_node(
    sid: str,
    *,
    current: str | None,
    online: Iterable[str],
    rules: list[Rule],
    placement: dict[str, str],
    failed_nodes: Iterable[str] = (),
    try_next: bool = False,
    failback: bool = True,
) -> str | None:
    """The node `sid` should run on, or None when no node is allowed.

    placement: where the other services are (or are going); it counts load and
    decides resource affinity. With try_next the current node and the nodes it
    already failed on are avoided (relocation after a failed start).
    """
    allowed = allowed_nodes(sid, online, rules)
    if try_next:
        for n in [*failed_nodes, current]:
            allowed.pop(n or "", None)
    if not allowed:
        return None
    others = {s: n for s, n in placement.items() if s != sid}
    together = {others[s] for s in affine(sid, rules, "positive") if s in others}
    together &= set(allowed)
    if together:
        allowed = {n: p for n, p in allowed.items() if n in together}
    apart = {others[s] for s in affine(sid, rules, "negative") if s in others}
    allowed = {n: p for n, p in allowed.items() if n not in apart}
    if not allowed:
        return None
    top = max(allowed.values())
    best = {n for n, p in allowed.items() if p == top}
    if current in allowed and not try_next and (current in best or not failback):
        return current
    load: dict[str, int] = {}
    for n in others.values():
        load[n] = load.get(n, 0) + 1
    return min(sorted(best), key=lambda n: load.get(n, 0))
