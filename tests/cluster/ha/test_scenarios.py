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


def test_a_quiet_cluster_writes_no_ha_status() -> None:
    """Once converged, neither the CRM nor the LRMs write their unchanged status every
    round (0.5 s): at 100 nodes that was 200 puts a second, each fsynced by every
    etcd member and sent to every node's watch. A change is still written at once:
    the crash at 10 s is recovered (the scenario's own test checks how fast)."""
    from corral.cluster.ha.env import LRM_STATUS, MANAGER_STATUS
    from corral.cluster.ha.timing import STATUS_REFRESH

    sim = Simulator(load(SCENARIOS / "node-crash"))
    writes: list[tuple[float, str]] = []
    real_put, real_txn = sim.store.put, sim.store.txn

    def put(key: str, *args: object, **kwargs: object) -> object:
        writes.append((sim.clock.monotonic(), key))
        return real_put(key, *args, **kwargs)  # type: ignore[arg-type]

    def txn(compare: object, success: list[tuple[str, ...]], *args: object) -> object:
        ok = real_txn(compare, success, *args)  # type: ignore[arg-type]
        if ok:
            writes.extend((sim.clock.monotonic(), op[1]) for op in success if op[0] == "put")
        return ok

    sim.store.put = put  # type: ignore[method-assign]
    sim.store.txn = txn  # type: ignore[method-assign]
    sim.run()

    def count(key: str, start: float, end: float) -> int:
        return sum(1 for t, k in writes if k == key and start <= t < end)

    # Converged by 3 s; node1 is powered off at 10 s.
    assert count(MANAGER_STATUS, 3, 10) == 0
    for node in ("node1", "node2", "node3"):
        assert count(LRM_STATUS + node, 3, 10) <= 7 / STATUS_REFRESH + 1
    assert count(MANAGER_STATUS, 10, 25) > 0  # the fence and the recovery
    assert count(MANAGER_STATUS, 0, 3) > 0
