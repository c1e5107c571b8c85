"""High availability: a cluster resource manager (CRM), one local resource manager
(LRM) per node, fencing through a watchdog process, and a simulator.

All HA logic reaches the world through one environment (`env.HAEnv`): the
node daemon runs it against etcd and the guest service, the simulator against
an in-memory store and a virtual clock, so the same code is replayed
deterministically by the scenario tests (tests/cluster/ha/scenarios/).
"""
