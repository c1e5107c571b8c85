"""Proxmox's calendar events (a subset of systemd.time), for backup job schedules.

    [WEEKDAYS] [[YYYY-]MM-DD] [HOURS:]MINUTES[:SECONDS]

WEEKDAYS is a list of names or ranges (`mon..fri,sun`); each time or date
component is `*`, a value, a list (`8,12`), a range (`8..17`) or a step
(`0/15`, `*/15`). A spec without a colon is minutes (`*/5`: every five
minutes). Words: minutely, hourly, daily, weekly, monthly, yearly,
annually, quarterly, semiannually. Examples from Proxmox's documentation:
`mon..fri 8..17,22:0/15`, `sat 03:00`, `*/2:00`, `12,14,16:05`.

Times are the node's local time, as Proxmox's. `next_event(spec, after)`
gives the first time strictly after `after` (a Unix time), or None.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from corral.cluster.errors import ParamError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WORDS = {
    "minutely": "*:*",
    "hourly": "*:00",
    "daily": "00:00",
    "weekly": "mon 00:00",
    "monthly": "*-*-01 00:00",
    "yearly": "*-01-01 00:00",
    "annually": "*-01-01 00:00",
    "quarterly": "*-01,04,07,10-01 00:00",
    "semiannually": "*-01,07-01 00:00",
}
_SEARCH_DAYS = 366 * 4 + 1  # a Feb 29 on a Monday can be years away; four years cover most


@dataclass(frozen=True)
class Event:
    weekdays: frozenset[int]
    years: frozenset[int] | None
    months: frozenset[int]
    days: frozenset[int]
    hours: tuple[int, ...]
    minutes: tuple[int, ...]


def _values(text: str, lo: int, hi: int, what: str, param: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        m = re.fullmatch(r"(\*|\d+)(?:\.\.(\d+))?(?:/(\d+))?", part)
        if not m:
            raise ParamError.one(param, f"invalid {what} '{part}'")
        start = lo if m.group(1) == "*" else int(m.group(1))
        end = int(m.group(2)) if m.group(2) else (hi if m.group(3) or m.group(1) == "*" else start)
        step = int(m.group(3) or 1)
        if not (lo <= start <= hi and lo <= end <= hi) or step < 1 or end < start:
            raise ParamError.one(param, f"{what} '{part}' out of range {lo}..{hi}")
        out.update(range(start, end + 1, step))
    return frozenset(out)


def _weekdays(text: str, param: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("..")
        if a not in DAYS or (b and b not in DAYS):
            raise ParamError.one(param, f"invalid weekday '{part}'")
        i, j = DAYS.index(a), DAYS.index(b or a)
        out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
    return frozenset(out)


def parse(spec: str, *, param: str = "schedule") -> Event:
    text = WORDS.get(spec.strip().lower(), spec.strip().lower())
    if not text or len(text) > 128:
        raise ParamError.one(param, "empty or too long calendar event")
    weekdays, years, months, days = frozenset(range(7)), None, frozenset(range(1, 13)), None
    hours: frozenset[int] | None = None
    minutes = frozenset({0})
    timespec = None
    for token in text.split():
        if token[:3] in DAYS:
            weekdays = _weekdays(token, param)
        elif "-" in token:
            parts = token.split("-")
            if len(parts) == 3:
                years = None if parts[0] == "*" else _values(parts[0], 1970, 2199, "year", param)
                parts = parts[1:]
            if len(parts) != 2:
                raise ParamError.one(param, f"invalid date '{token}'")
            months = _values(parts[0], 1, 12, "month", param)
            days = _values(parts[1], 1, 31, "day", param)
        elif timespec is None:
            timespec = token
        else:
            raise ParamError.one(param, f"unexpected '{token}' in calendar event")
    if timespec is not None:
        pieces = timespec.split(":")
        if len(pieces) == 1:
            hours, minutes = frozenset(range(24)), _values(pieces[0], 0, 59, "minute", param)
        elif len(pieces) in (2, 3):
            hours = _values(pieces[0], 0, 23, "hour", param)
            minutes = _values(pieces[1], 0, 59, "minute", param)
            if len(pieces) == 3 and pieces[2] not in ("0", "00"):
                raise ParamError.one(param, "seconds other than 0 are not supported")
        else:
            raise ParamError.one(param, f"invalid time '{timespec}'")
    return Event(
        weekdays=weekdays,
        years=years,
        months=months,
        days=days if days is not None else frozenset(range(1, 32)),
        hours=tuple(sorted(hours if hours is not None else {0})),
        minutes=tuple(sorted(minutes)),
    )


def next_event(spec: str | Event, after: float) -> float | None:
    """The first matching minute strictly after `after` (local time), or None."""
    ev = parse(spec) if isinstance(spec, str) else spec
    start = time.localtime(after)
    day = time.mktime((start.tm_year, start.tm_mon, start.tm_mday, 12, 0, 0, 0, 0, -1))
    for n in range(_SEARCH_DAYS):
        t = time.localtime(day + n * 86400)
        if (
            t.tm_wday not in ev.weekdays
            or t.tm_mon not in ev.months
            or t.tm_mday not in ev.days
            or (ev.years is not None and t.tm_year not in ev.years)
        ):
            continue
        for hour in ev.hours:
            for minute in ev.minutes:
                when = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, hour, minute, 0, 0, 0, -1))
                if when > after:
                    return when
    return None
