"""Choosing a node for a new or migrating guest, by free resources.

Pure ranking over the nodes' published figures (memory first, then CPU
load, then fewer guests, then name for determinism), so the choice is
testable and the same on every node that makes it.
"""

from __future__ import annotations

from typing import Any

from corral.cluster import keys
from corral.cluster.errors import Unavailable
from corral.cluster.store_api import StoreAPI


def rank(
    nodes: list[dict[str, Any]], *, memory: int = 0, exclude: frozenset[str] = frozenset()
) -> list[str]:
    """Names of the nodes that can take `memory` more bytes, best first.

    Each node dict: node, maxmem, mem, maxcpu, cpu, guests (count), committed
    (bytes of memory promised to its guests).
    """
    fits = []
    for n in nodes:
        if n["node"] in exclude:
            continue
        free = n.get("maxmem", 0) - max(n.get("mem", 0), n.get("committed", 0))
        if free < memory:
            continue
        fits.append((-free, n.get("cpu", 0.0), n.get("guests", 0), n["node"]))
    return [f[3] for f in sorted(fits)]


def node_figures(store: StoreAPI) -> list[dict[str, Any]]:
    online = {kv.key.split("/", 1)[1] for kv in store.range(keys.NODE_ALIVE)}
    figures: dict[str, dict[str, Any]] = {}
    for kv in store.range(keys.NODE_STATUS):
        name = kv.key.split("/", 1)[1]
        if name in online:
            v = kv.value
            figures[name] = {
                "node": name,
                "maxmem": v.get("maxmem", 0),
                "mem": v.get("mem", 0),
                "cpu": v.get("cpu", 0.0),
                "guests": 0,
                "committed": 0,
            }
    for kv in store.range(keys.GUESTS):
        rec = kv.value
        fig = figures.get(rec.get("node"))
        if fig is not None:
            fig["guests"] += 1
            fig["committed"] += int(rec.get("config", {}).get("memory", 512)) << 20
    return list(figures.values())


def choose_node(store: StoreAPI, *, memory: int = 0, exclude: frozenset[str] = frozenset()) -> str:
    ranked = rank(node_figures(store), memory=memory, exclude=exclude)
    if not ranked:
        raise Unavailable(f"no online node has {memory >> 20} MiB of memory free")
    return ranked[0]
