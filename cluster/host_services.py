"""What a node really runs: corral's own daemons and the host's services.

Proxmox lists systemd units (`GET /nodes/{node}/services`). corral does not depend
on systemd (it is not PID 1 on every host, and not here), so this reports what
runs, from the node daemon itself and from /proc:

- `corrald` (this process), its private etcd member (or the external endpoints it
  uses), the HA fencing watchdog process, the container monitors of this node's
  lxcpath, and libvirt as the node's VM driver reaches it (embedded in corrald or
  the host's libvirtd);
- the host's usual services (sshd, cron, syslog, time sync, mail), found as
  processes of this node's own namespaces (a container's syslogd is not the host's).

What can be acted on is what corral itself started and can start again: the private
etcd member can be restarted (its supervisor brings it back; see `restart_etcd`).
Everything else answers why not (`refusal`), instead of pretending.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from corral.cluster.errors import ParamError
from corral.cluster.tasks import TaskContext, task_handler

# (id, description, process names it runs as)
HOST_SERVICES = (
    ("sshd", "OpenSSH server", ("sshd",)),
    ("cron", "periodic command scheduler", ("cron", "crond")),
    ("syslog", "system logging daemon", ("rsyslogd", "syslog-ng", "syslogd")),
    ("chrony", "NTP client/server", ("chronyd",)),
    ("systemd-timesyncd", "network time synchronisation", ("systemd-timesyn",)),
    ("postfix", "mail transport agent", ("master",)),
)
CORRAL_SERVICES = ("corrald", "corral-etcd", "corral-watchdog", "libvirtd", "lxc-monitor")
SERVICE_IDS = CORRAL_SERVICES + tuple(s[0] for s in HOST_SERVICES)
_NAMESPACES = ("pid", "net", "mnt")
ACTIONS = ("start", "stop", "restart", "reload")


@dataclass
class Proc:
    pid: int
    comm: str
    cmdline: str


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _same_namespaces(pid: int | str, mine: tuple[str, ...]) -> bool:
    try:
        return tuple(os.readlink(f"/proc/{pid}/ns/{ns}") for ns in _NAMESPACES) == mine
    except OSError:
        return False


def host_processes() -> Iterator[Proc]:
    """Processes in this node's pid, net and mount namespaces (not its containers',
    not another lab node's)."""
    mine = tuple(os.readlink(f"/proc/self/ns/{ns}") for ns in _NAMESPACES)
    for name in os.listdir("/proc"):
        if name.isdigit() and _same_namespaces(name, mine):
            comm = _read(f"/proc/{name}/comm").strip()
            if comm:
                yield Proc(int(name), comm, _read(f"/proc/{name}/cmdline").replace("\0", " "))


def uptime_of(pid: int) -> int | None:
    """Seconds since `pid` started (from /proc, in clock ticks since boot)."""
    try:
        stat = _read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
        started = int(stat[19]) / os.sysconf("SC_CLK_TCK")
        since_boot = float(_read("/proc/uptime").split()[0])
    except (IndexError, ValueError, OSError):
        return None
    return max(0, int(since_boot - started))


def _row(service: str, desc: str, running: bool | None, pid: int | None = None) -> dict[str, Any]:
    """Proxmox's row; `running` None: state unknown. unit-state "static": started by
    corrald or the host, not an enabled/disabled unit corral could read."""
    if running is None:
        state, active = "unknown", "unknown"
    else:
        state, active = ("running", "active") if running else ("dead", "inactive")
    row: dict[str, Any] = {
        "service": service,
        "name": service,
        "desc": desc,
        "state": state,
        "active-state": active,
        "unit-state": "static",
    }
    if pid is not None:
        row["pid"] = pid
        up = uptime_of(pid)
        if up is not None:
            row["uptime"] = up
    return row


def _alive(proc: Any) -> int | None:
    """The pid of a subprocess.Popen that still runs, else None."""
    if proc is None or proc.poll() is not None:
        return None
    return int(proc.pid)


def list_services(services: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every service of SERVICE_IDS on this node, from `services` (the node's
    NodeServices) and /proc."""
    procs = list(host_processes())
    rows = [
        _row("corrald", "corral node daemon: API, tasks, status (this process)", True, os.getpid())
    ]
    etcd = services.get("etcd")
    if etcd is not None:
        pid = _alive(etcd.proc)
        restarts = getattr(etcd, "restarts", 0)
        rows.append(
            _row(
                "corral-etcd",
                f"private etcd member of this node, started by corrald "
                f"({etcd.state}; restarted {restarts} times)",
                pid is not None,
                pid,
            )
        )
    else:
        store = services.get("store")
        endpoints = ", ".join(getattr(store, "endpoints", []) or [])
        rows.append(
            _row("corral-etcd", f"external etcd at {endpoints or '?'} (not run by this node)", None)
        )
    ha = services.get("ha")
    watchdog = getattr(getattr(getattr(ha, "env", None), "watchdog", None), "proc", None)
    pid = _alive(watchdog)
    rows.append(
        _row(
            "corral-watchdog",
            "HA fencing watchdog, started by corrald when this node runs HA guests",
            pid is not None,
            pid,
        )
    )
    rows.append(_libvirt(services, procs))
    lxcpath = os.path.join(str(services.get("data_dir") or ""), "lxc")
    monitors = [p for p in procs if p.cmdline.startswith(f"[lxc monitor] {lxcpath} ")]
    rows.append(
        _row(
            "lxc-monitor",
            f"{len(monitors)} container monitors (one per running CT of {lxcpath})",
            bool(monitors),
        )
    )
    for service, desc, names in HOST_SERVICES:
        found = [p for p in procs if p.comm in names]
        if service == "postfix":
            found = [p for p in found if "postfix" in p.cmdline]
        rows.append(
            _row(
                service,
                f"{desc} (the host's; not managed by corral)",
                bool(found),
                min((p.pid for p in found), default=None),
            )
        )
    for row in rows:  # what the console may offer (the API answers why not for the rest)
        row["actions"] = [a for a in ACTIONS if refusal(services, row["service"], a) is None]
    return rows


def _libvirt(services: Mapping[str, Any], procs: list[Proc]) -> dict[str, Any]:
    driver = (services.get("drivers") or {}).get("qemu")
    uri = str(getattr(driver, "uri", "") or "")
    if uri.startswith("qemu:///embed"):
        return _row(
            "libvirtd", f"libvirt's QEMU driver embedded in corrald ({uri})", True, os.getpid()
        )
    daemons = [p for p in procs if p.comm == "libvirtd"]
    what = f"the host's libvirt daemon, reached at {uri}" if uri else "the host's libvirt daemon"
    if driver is None:
        what += " (the VM driver is not loaded on this node)"
    return _row("libvirtd", what, bool(daemons), min((p.pid for p in daemons), default=None))


def get_service(services: Mapping[str, Any], service: str) -> dict[str, Any]:
    for row in list_services(services):
        if row["service"] == service:
            return row
    raise ParamError.one("service", f"unknown service '{service}'")


def refusal(services: Mapping[str, Any], service: str, action: str) -> str | None:
    """Why `action` cannot be done to `service` here; None when it can."""
    if service == "corral-etcd":
        if services.get("etcd") is None:
            return "this node uses an external etcd, which corral does not run"
        if action in ("restart", "reload"):
            return None
        return (
            "corrald needs its etcd member: stopping it would cut this node off the "
            "cluster (restart is offered)"
        )
    reasons = {
        "corrald": "corrald cannot stop or restart itself from a request it serves: "
        "run 'corral restart' (or the host's init system) on the node",
        "corral-watchdog": "the fencing watchdog is started and fed by corrald; stopping "
        "it would leave HA guests unfenced, and corrald restarts it when it dies",
        "libvirtd": "libvirt is the host's (or embedded in corrald): use the host's init system",
        "lxc-monitor": "container monitors belong to their containers: start or stop the CT",
    }
    return reasons.get(
        service, "a host service: corral does not manage it (use the host's init system)"
    )


def restart_etcd(etcd: Any, log: Any, timeout: float = 30.0) -> None:
    """Restart the private etcd member: SIGTERM, then its supervisor (etcd_embed) starts
    it again on the same data; wait until the new process answers on its socket."""
    old = _alive(etcd.proc)
    if old is None:
        raise ParamError.one("service", "the private etcd member is not running")
    log(f"stopping etcd (pid {old})")
    os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = _alive(etcd.proc)
        if new is not None and new != old:
            etcd.wait_healthy(max(1.0, deadline - time.monotonic()))
            log(f"etcd running again (pid {new})")
            return
        time.sleep(0.1)
    raise TimeoutError(f"etcd did not come back within {timeout:.0f} s")


@task_handler("srvrestart")
def _restart_task(ctx: TaskContext, args: dict[str, Any]) -> None:
    service = str(args.get("service"))
    services = ctx.worker.context
    why = refusal(services, service, "restart")
    if why is not None:
        raise ParamError.one("service", why)  # checked by the API too; the node may differ
    restart_etcd(services.get("etcd"), ctx.log)


@task_handler("srvreload")
def _reload_task(ctx: TaskContext, args: dict[str, Any]) -> None:
    _restart_task(ctx, args)  # etcd has no reload: a restart, as systemd's reload-or-restart
