"""HA timings, and why they meet "running elsewhere within 10 s, no fence under 2 s".

Each node's LRM holds an agent lock: a key under an etcd lease of AGENT_TTL
seconds, renewed every RENEW seconds by a thread of its own. A renewal counts
only when etcd answered the keepalive AND a linearizable read after it found
the lock still ours: etcd renews leases on whichever member thinks it leads,
even one cut off from the majority, and the read proves that member still led
a majority after renewing. Then the watchdog process gets a new deadline:
(monotonic time at which the keepalive was SENT) + WATCHDOG. The leader
restarted the lease's TTL after receiving it, and a new leader restarts every
TTL at its election (later still), so the lease cannot expire before
send + AGENT_TTL; the watchdog kills the node's HA guests at send + WATCHDOG,
KILL_BUDGET = AGENT_TTL - WATCHDOG = 0.5 s earlier (SIGKILL through pidfds
takes milliseconds).

The CRM recovers a node's services only once it has seen the agent lock gone
for FENCE_MARGIN more seconds (covers clock-rate differences between hosts).
So a copy elsewhere starts after expiry + margin, and the fenced copy died
KILL_BUDGET + FENCE_MARGIN = 1 s before that at the latest: never two copies.

No fence on a blip of b seconds: the watchdog fires only if no renewal sent
in the last WATCHDOG seconds succeeded. An attempt in flight when the link
drops fails within about 1 s (CALL_TIMEOUT, plus re-connecting: the store
drops its connection on a timeout), the next ones too, and the first attempt
after the link returns may have started just before: measured in the lab,
the gap between confirmed renewals is b + 1.5 s (3.5 s for a 2 s blip, once
4.0 s). WATCHDOG = 4.5 s keeps half a second above that. (etcd's pre-vote,
cluster/etcd_embed.py, keeps the returning member from forcing an election
that would cost every node quorum for seconds.)

Failover time after a crash: the lease lapses <= AGENT_TTL after the last
renewal, the CRM notices within ROUND, waits FENCE_MARGIN, picks a node and
writes the new placement; that node's LRM sees it within ROUND and starts the
guest: 5 + 0.5 + 0.5 + 0.5 + start (~0.5 s for a container) ~= 7 s worst
case when the CRM survives; when the CRM's node is the one that died, its
MANAGER_TTL runs at the same time, and when etcd's leader died too, the new
leader restarts every TTL at its election (~1-2 s later): ~8-9 s, still under
the 10 s goal. (Proxmox VE: 60 s watchdog + 120 s lock expiry: 2-3 minutes.)
"""

from __future__ import annotations

ROUND = 0.5  # CRM and LRM loop period
RENEW = 0.5  # agent/manager lease renewal period
CALL_TIMEOUT = 0.5  # bound on one store call made by the HA loops
WATCHDOG = 4.5  # no confirmed renewal sent within this long -> kill HA guests
AGENT_TTL = 5  # etcd lease TTL of the agent lock (integer seconds: etcd's unit)
KILL_BUDGET = AGENT_TTL - WATCHDOG  # time for the kill before the lease may expire
FENCE_MARGIN = 0.5  # CRM waits this long after seeing the agent lock gone
MANAGER_TTL = 5  # etcd lease TTL of the manager lock
# An LRM writes its status when it changes, and unchanged at most this often (a
# key lost meanwhile, to a restore or a node's cleanup, comes back): a write every
# ROUND was 2 puts a second per node, each fsynced by every etcd member and sent
# to every node's watch.
STATUS_REFRESH = 10.0

assert KILL_BUDGET + FENCE_MARGIN >= 1.0
assert 2.0 + 1.5 + 0.5 <= WATCHDOG  # the blip budget measured in the lab, plus headroom
