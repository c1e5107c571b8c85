"""Backup retention as Proxmox's `prune-backups` (PVE::Storage::prune_mark_backup_group).

    keep-all=1 | keep-last=N,keep-hourly=N,keep-daily=N,keep-weekly=N,keep-monthly=N,keep-yearly=N

Within one group (one guest's backups on one storage), newest first: keep-last
keeps the N newest; then each further option keeps the newest backup of each
of N periods (hour, day, ISO week, month, year) not yet covered by a backup an
earlier option kept. Everything not kept is removed, except protected ones.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from corral.cluster.errors import ParamError

OPTIONS = ("keep-last", "keep-hourly", "keep-daily", "keep-weekly", "keep-monthly", "keep-yearly")
_PERIOD: dict[str, Callable[[time.struct_time], str]] = {
    "keep-hourly": lambda t: time.strftime("%Y/%m/%d/%H", t),
    "keep-daily": lambda t: time.strftime("%Y/%m/%d", t),
    "keep-weekly": lambda t: time.strftime("%G/%V", t),
    "keep-monthly": lambda t: time.strftime("%Y/%m", t),
    "keep-yearly": lambda t: time.strftime("%Y", t),
}


def parse(text: str | None, *, param: str = "prune-backups") -> dict[str, int]:
    """`keep-last=3,keep-daily=7` -> {"keep-last": 3, "keep-daily": 7}."""
    out: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        m = re.fullmatch(r"\s*(keep-[a-z]+)=(\d{1,6})\s*", part)
        if not m or (m.group(1) not in OPTIONS and m.group(1) != "keep-all"):
            raise ParamError.one(param, f"invalid retention option '{part.strip()}'")
        out[m.group(1)] = int(m.group(2))
    if out.get("keep-all") and len(out) > 1:
        raise ParamError.one(param, "keep-all cannot be combined with other options")
    return out


def print_options(keep: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in keep.items())


def mark(backups: list[dict[str, Any]], keep: dict[str, int]) -> list[dict[str, Any]]:
    """Each entry ({"volid", "ctime", "protected"?...}) with `mark`: keep, remove
    or protected; newest first. Without options (or keep-all) everything is kept."""
    rows = sorted((dict(b) for b in backups), key=lambda b: -int(b["ctime"]))
    if keep.get("keep-all") or not any(keep.get(o) for o in OPTIONS):
        for row in rows:
            row["mark"] = "protected" if row.get("protected") else "keep"
        return rows
    counter = iter(range(len(rows) + 1))
    ids: dict[str, Callable[[time.struct_time], str]] = {
        "keep-last": lambda _t: str(next(counter)),
        **_PERIOD,
    }
    for option in OPTIONS:
        want = keep.get(option) or 0
        if not want:
            continue
        bucket = {id(r): ids[option](time.localtime(int(r["ctime"]))) for r in rows}
        covered = {bucket[id(r)] for r in rows if r.get("mark") == "keep"}
        new: set[str] = set()
        for row in rows:
            key = bucket[id(row)]
            if row.get("mark") or key in covered:
                continue
            if key not in new:
                if len(new) >= want:
                    break
                new.add(key)
                row["mark"] = "keep"
            else:
                row["mark"] = "remove"
    for row in rows:
        if row.get("protected"):
            row["mark"] = "protected"
        row.setdefault("mark", "remove")
    return rows


def for_storage(store: Any, storage: str, given: str | None) -> dict[str, int]:
    """The retention to apply: the one given (job or call), else the storage's
    `prune-backups` (Proxmox's order); {} keeps everything."""
    if given:
        return parse(given)
    from corral.cluster import keys

    conf = store.get_value(keys.storage(storage)) or {}
    return parse(conf.get("prune-backups"), param=f"prune-backups of storage '{storage}'")
