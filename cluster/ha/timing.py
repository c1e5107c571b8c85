"""HA timings, and why they meet "running elsewhere within 10 s, no fence under 2 s".

Each node's LRM holds an agent lock: a key under an etcd lease of AGENT_TTL
seconds, renewed every RENEW seconds by a thread of its own. After each
renewal that etcd confirmed, the watchdog process gets a new deadline:
(monotonic time at which that renewal was SENT) + WATCHDOG. etcd started the
lease's new TTL after receiving the request, i.e. after the send time, so the
lease cannot expire before send + AGENT_TTL, and the watchdog kills the
node's HA guests at send + WATCHDOG at the latest, KILL_BUDGET = AGENT_TTL -
WATCHDOG = 1 s before that (SIGKILL through pidfds: milliseconds).

The CRM recovers a node's services only once it has seen the agent lock gone
for FENCE_MARGIN more seconds (covers clock-rate differences between hosts
and a slow kill). So a copy elsewhere starts after expiry + margin, and the
fenced copy died before expiry: never two copies.

No fence on a blip of b seconds: the watchdog fires only if no renewal sent
in the last WATCHDOG seconds succeeded. The last success before the blip was
sent at most RENEW + CALL_TIMEOUT earlier (a renewal in flight when the link
drops waits for its timeout), and the first after it is sent at most
RENEW + CALL_TIMEOUT after the link returns: gap <= b + RENEW + CALL_TIMEOUT
(the renewal thread is either sleeping or waiting on one call). With b = 2 s:
2 + 0.5 + 1.0 = 3.5 s < WATCHDOG = 4.5 s, leaving 1 s for an etcd leader
election after the blip.

Failover time after a crash: the lease lapses <= AGENT_TTL after the last
renewal, the CRM notices within ROUND, waits FENCE_MARGIN, picks a node and
writes the new placement; that node's LRM sees it within ROUND and starts the
guest: 6 + 0.5 + 1.0 + 0.5 + start (~0.3 s for a container) ~= 8.3 s worst
case, under the 10 s goal. (Proxmox VE: 60 s watchdog + 120 s lock expiry.)
"""

from __future__ import annotations

ROUND = 0.5  # CRM and LRM loop period
RENEW = 0.5  # agent/manager lease renewal period
CALL_TIMEOUT = 1.0  # bound on one store call made by the HA loops
WATCHDOG = 4.5  # no confirmed renewal sent within this long -> kill HA guests
AGENT_TTL = 6  # etcd lease TTL of the agent lock (integer seconds: etcd's unit)
KILL_BUDGET = AGENT_TTL - WATCHDOG  # time for the kill before the lease may expire
FENCE_MARGIN = 1.0  # CRM waits this long after seeing the agent lock gone
MANAGER_TTL = 6  # etcd lease TTL of the manager lock

assert KILL_BUDGET >= 1.0
assert 2.0 + RENEW + CALL_TIMEOUT < WATCHDOG
