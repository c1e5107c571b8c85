"""Replay every HA scenario in the simulator and diff its log against log.expect.

Each scenario runs the real CRM/LRM code against the in-memory store on a
virtual clock; the simulator raises TwoCopies the moment a guest runs on two
nodes, at every step. `expect` in scenario.json states the outcome in words
a reviewer can check without reading the log: where each guest ends up
running ("-": nowhere), the longest outage, and "no_fence" for blips.
CORRAL_REGEN_GOLDEN=1 rewrites the expected logs (review the diff).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cluster.ha.sim import Simulator, load
from tests.util import assert_golden

SCENARIOS = Path(__file__).parent / "scenarios"
CASES = sorted(p.name for p in SCENARIOS.iterdir() if (p / "scenario.json").exists())


def test_there_are_thirty_scenarios() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_scenario(name: str) -> None:
    d = SCENARIOS / name
    scenario = load(d)
    sim = Simulator(scenario)
    got = "\n".join(sim.run()) + "\n"
    expected = d / "log.expect"
    assert_golden(got, expected)
    expect = scenario.get("expect", {})
    for sid, node in expect.get("final", {}).items():
        where = ",".join(sorted(sim.running[sid])) or "-"
        assert where == node, f"{sid} runs on {where}, expected {node}"
    if "max_failover" in expect:
        assert sim.max_failover is not None, "no guest was ever recovered"
        assert sim.max_failover <= expect["max_failover"]
    if expect.get("no_fence"):
        assert not [line for line in sim.lines if "watchdog" in line or "'fence'" in line]


def test_simulation_is_deterministic() -> None:
    scenario = load(SCENARIOS / "network-partition")
    assert Simulator(scenario).run() == Simulator(scenario).run()


def test_a_crm_round_reads_the_lrm_statuses_at_once() -> None:
    """The CRM reads every node's LRM status each round (0.5 s): one range read, not
    a get per node (200 etcd round trips a second at 100 nodes)."""
    from corral.cluster.ha.env import LRM_STATUS

    sim = Simulator(load(SCENARIOS / "network-partition"))
    gets: list[str] = []
    ranges: list[str] = []
    real_get, real_range = sim.store.get, sim.store.range

    def get(key: str, *args: object, **kwargs: object) -> object:
        gets.append(key)
        return real_get(key, *args, **kwargs)  # type: ignore[arg-type]

    def range_(prefix: str, *args: object, **kwargs: object) -> object:
        ranges.append(prefix)
        return real_range(prefix, *args, **kwargs)  # type: ignore[arg-type]

    sim.store.get = get  # type: ignore[method-assign]
    sim.store.range = range_  # type: ignore[method-assign]
    sim.run()
    assert ranges.count(LRM_STATUS) > 0
    assert [k for k in gets if k.startswith(LRM_STATUS)] == []
