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
KILL_BUDGET = AGENT_TTL - WATCHDOG = 1 s earlier (SIGKILL through pidfds
takes milliseconds).

The CRM recovers a node's services only once it has seen the agent lock gone
for FENCE_MARGIN more seconds (covers clock-rate differences between hosts).
So a copy elsewhere starts after expiry + margin, and the fenced copy died a
second before expiry: never two copies.

No fence on a blip of b seconds: the watchdog fires only if no renewal sent
in the last WATCHDOG seconds succeeded. A renewal (keepalive + read) in
flight when the link drops fails after at most 2 * CALL_TIMEOUT; the last
success was sent at most RENEW before the cut and the first after it is sent
at most RENEW + 2 * CALL_TIMEOUT after the link returns, so the gap is at most
b + RENEW + 2 * CALL_TIMEOUT (the renewal thread is either sleeping or waiting
on one attempt). With b = 2 s: 2 + 0.5 + 1.0 = 3.5 s < WATCHDOG = 4 s.
(etcd's pre-vote, cluster/etcd_embed.py, keeps the returning member from
forcing an election that would cost everyone quorum for seconds.)

Failover time after a crash: the lease lapses <= AGENT_TTL after the last
renewal, the CRM notices within ROUND, waits FENCE_MARGIN, picks a node and
writes the new placement; that node's LRM sees it within ROUND and starts the
guest: 5 + 0.5 + 0.5 + 0.5 + start (~0.3 s for a container) ~= 6.8 s worst
case when the CRM survives; when the CRM's node is the one that died, its
MANAGER_TTL runs at the same time, and when etcd's leader died too, the new
leader restarts every TTL at its election (~1-2 s later): ~8-9 s, still under
the 10 s goal. (Proxmox VE: 60 s watchdog + 120 s lock expiry: 2-3 minutes.)
"""

from __future__ import annotations

ROUND = 0.5  # CRM and LRM loop period
RENEW = 0.5  # agent/manager lease renewal period
CALL_TIMEOUT = 0.5  # bound on one store call made by the HA loops
WATCHDOG = 4.0  # no confirmed renewal sent within this long -> kill HA guests
AGENT_TTL = 5  # etcd lease TTL of the agent lock (integer seconds: etcd's unit)
KILL_BUDGET = AGENT_TTL - WATCHDOG  # time for the kill before the lease may expire
FENCE_MARGIN = 0.5  # CRM waits this long after seeing the agent lock gone
MANAGER_TTL = 5  # etcd lease TTL of the manager lock

assert KILL_BUDGET >= 1.0
assert 2.0 + RENEW + 2 * CALL_TIMEOUT < WATCHDOG
