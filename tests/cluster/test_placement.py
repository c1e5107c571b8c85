"""Placement ranks nodes by free memory, then load, then guest count."""

from __future__ import annotations

import pytest

from corral.cluster import keys
from corral.cluster.errors import Unavailable
from corral.cluster.placement import choose_node, rank
from corral.cluster.store_api import StoreAPI

GIB = 1 << 30


def node(
    name: str, free_gib: int, cpu: float = 0.0, guests: int = 0, committed: int = 0
) -> dict[str, object]:
    return {
        "node": name,
        "maxmem": 64 * GIB,
        "mem": (64 - free_gib) * GIB,
        "cpu": cpu,
        "guests": guests,
        "committed": committed,
    }


def test_most_free_memory_wins() -> None:
    assert rank([node("a", 8), node("b", 32), node("c", 16)]) == ["b", "c", "a"]


def test_ties_break_on_load_then_guests_then_name() -> None:
    nodes = [
        node("b", 16, cpu=0.5),
        node("a", 16, cpu=0.1),
        node("d", 16, cpu=0.1, guests=3),
        node("c", 16, cpu=0.1, guests=3),
    ]
    assert rank(nodes) == ["a", "c", "d", "b"]


def test_nodes_that_cannot_fit_or_are_excluded_are_left_out() -> None:
    nodes = [node("a", 2), node("b", 40), node("c", 20)]
    assert rank(nodes, memory=4 * GIB, exclude=frozenset({"b"})) == ["c"]


def test_memory_promised_to_guests_counts_as_used() -> None:
    # Idle guests use little now but were promised their memory.
    nodes = [node("a", 60, committed=50 * GIB), node("b", 30)]
    assert rank(nodes) == ["b", "a"]


def test_choose_node_reads_online_nodes_and_their_guests(store: StoreAPI) -> None:
    """On etcd and in memory: only nodes with a live key count; guests' memory is committed."""
    for name, free in (("a", 40), ("b", 48), ("c", 60)):
        store.put(keys.node_status(name), {"maxmem": 64 * GIB, "mem": (64 - free) * GIB})
    store.put(keys.node_alive("a"), {})
    store.put(keys.node_alive("b"), {})  # c is offline: its figures are stale
    store.put(keys.guest(1), {"node": "b", "config": {"memory": 40 * 1024}})
    assert choose_node(store) == "a"  # b has 48 GiB free, but 40 of 64 promised
    assert choose_node(store, exclude=frozenset({"a"})) == "b"
    with pytest.raises(Unavailable):
        choose_node(store, memory=100 * GIB)
