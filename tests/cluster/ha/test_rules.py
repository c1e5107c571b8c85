"""Placement rules and model validation as tables (pure functions)."""

from __future__ import annotations

import pytest

from corral.cluster.errors import ParamError
from corral.cluster.ha.model import check_rules, parse_sid, resource_from, rule_from
from corral.cluster.ha.rules import select_node

NODES = ["node1", "node2", "node3"]


def rule(**kw: object) -> object:
    return rule_from({"rule": "r" + str(abs(hash(tuple(sorted(kw.items()))))), **kw})


@pytest.mark.parametrize(
    "rules,kw,expected",
    [
        ([], {"current": "node2"}, "node2"),  # no rule: stay
        ([], {"current": None}, "node1"),  # least loaded, then name
        ([], {"current": None, "placement": {"vm:109": "node1"}}, "node2"),
        ([{"type": "node-affinity", "resources": "vm:101", "nodes": "node3:2,node2:1"}],
         {"current": "node1"}, "node3"),  # highest priority wins
        ([{"type": "node-affinity", "resources": "vm:101", "nodes": "node3:2,node2:1"}],
         {"current": "node2", "online": ["node1", "node2"]}, "node2"),
        ([{"type": "node-affinity", "resources": "vm:101", "nodes": "node3:2,node2:1"}],
         {"current": "node2", "failback": False}, "node2"),  # no failback: stay
        ([{"type": "node-affinity", "resources": "vm:101", "nodes": "node3", "strict": 1}],
         {"current": "node1", "online": ["node1", "node2"]}, None),  # strict: nowhere
        ([{"type": "node-affinity", "resources": "vm:101", "nodes": "node3"}],
         {"current": "node1", "online": ["node1", "node2"]}, "node1"),  # non-strict: anywhere
        ([], {"current": "node1", "try_next": True, "failed_nodes": ["node2"]}, "node3"),
        ([], {"current": "node1", "try_next": True, "failed_nodes": ["node2", "node3"]}, None),
        ([{"type": "resource-affinity", "resources": "vm:101,vm:102", "affinity": "positive"}],
         {"current": "node1", "placement": {"vm:102": "node3"}}, "node3"),
        ([{"type": "resource-affinity", "resources": "vm:101,vm:102", "affinity": "negative"}],
         {"current": "node1", "placement": {"vm:102": "node1"}}, "node2"),
        ([{"type": "resource-affinity", "resources": "vm:101,vm:102", "affinity": "negative"},
          {"type": "resource-affinity", "resources": "vm:101,vm:103", "affinity": "negative"}],
         {"current": None, "placement": {"vm:102": "node1", "vm:103": "node2"}}, "node3"),
        ([{"type": "node-affinity", "resources": "vm:101", "nodes": "node1", "disable": 1}],
         {"current": "node2"}, "node2"),  # a disabled rule does not count
    ],
)  # fmt: skip
def test_select_node(rules: list[dict[str, object]], kw: dict[str, object], expected: str) -> None:
    args = {"online": NODES, "placement": {}, **kw}
    got = select_node("vm:101", rules=[rule(**r) for r in rules], **args)  # type: ignore[arg-type]
    assert got == expected


@pytest.mark.parametrize(
    "params,param",
    [
        ({"sid": "vm:99"}, "sid"),
        ({"sid": "lxc:100"}, "sid"),
        ({"sid": "ct:100", "state": "on"}, "state"),
        ({"sid": "ct:100", "max_restart": 11}, "max_restart"),
        ({"sid": "ct:100", "max_relocate": -1}, "max_relocate"),
        ({"sid": "ct:100", "failback": "maybe"}, "failback"),
        ({"sid": "ct:100", "comment": "two\nlines"}, "comment"),
    ],
)
def test_bad_resources_name_the_parameter(params: dict[str, object], param: str) -> None:
    with pytest.raises(ParamError) as err:
        resource_from(params)
    assert param in err.value.errors


def test_resource_defaults_and_aliases() -> None:
    assert parse_sid("100") == ("vm", 100)
    res = resource_from({"sid": "ct:100", "state": "enabled"})
    assert (res.state, res.max_restart, res.max_relocate, res.failback) == ("started", 1, 1, True)


def test_one_node_affinity_rule_per_resource() -> None:
    a = rule_from({"rule": "ra", "type": "node-affinity", "resources": "vm:101", "nodes": "node1"})
    b = rule_from({"rule": "rb", "type": "node-affinity", "resources": "vm:101", "nodes": "node2"})
    with pytest.raises(ParamError):
        check_rules([a, b])
    check_rules([a])
