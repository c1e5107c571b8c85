"""A node's log (`/nodes/{node}/syslog`, `/journal`) from the files it really has.

Proxmox reads the systemd journal. corral does not depend on journald (not every
host runs it; this one does not), so a node's log is the time-ordered merge of:

- `corrald`: the daemon's own log, which it writes to DATA_DIR/log/corrald.log
  (cluster.logfmt.add_file_log) whoever started it;
- `etcd`: the private etcd member's output (DATA_DIR/etcd/etcd.log);
- `libvirtd`: the host's libvirt daemon log, when the host has one;
- `syslog`: the host's syslog file (/var/log/syslog or /var/log/messages), if any.

Only the last TAIL_BYTES of each file are read, so a request costs the same on a
host with gigabytes of logs. A line without a time of its own (a traceback's
continuation) takes the time of the line before it.
"""

from __future__ import annotations

import calendar
import datetime
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

TAIL_BYTES = 2 << 20
HOST_FILES = (
    ("libvirtd", "/var/log/libvirt/libvirtd.log"),
    ("syslog", "/var/log/syslog"),
    ("syslog", "/var/log/messages"),
)
# 2026-12-06T06:06:14.219Z, 2026-12-06 06:06:14.219+0000, raft2026/12/06 06:12:15
_ISO = re.compile(
    r"(\d{4})[-/](\d\d)[-/](\d\d)[ T](\d\d):(\d\d):(\d\d)(\.\d+)?\s?(Z|[+-]\d\d:?\d\d)?"
)
_BSD = re.compile(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) ")  # Dec  6 06:06:14
_MONTHS = {
    m: i for i, m in enumerate(("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec").split(), 1)
}


@dataclass(frozen=True)
class Entry:
    time: float
    source: str
    text: str

    def line(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return f"{stamp} {self.source}: {self.text}"


def sources(data_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(source, file) of every log this node has, existing files only."""
    base = Path(data_dir)
    out = [("corrald", base / "log" / "corrald.log"), ("etcd", base / "etcd" / "etcd.log")]
    out += [(name, Path(path)) for name, path in HOST_FILES]
    return [(name, path) for name, path in out if path.is_file()]


def _tail(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read(TAIL_BYTES)
    except OSError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if size > TAIL_BYTES else lines  # the first may be cut


def parse_time(line: str, year: int) -> tuple[float, str] | None:
    """(epoch seconds, the line without its time) when the line starts with one."""
    m = _ISO.search(line, 0, 48)
    if m is not None:
        y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
        frac = float(m.group(7) or 0)
        zone = m.group(8)
        fields = (y, mo, d, h, mi, s, 0, 0, -1)
        if zone is None:
            when = time.mktime(fields)  # a naive time is the host's local time
        else:
            when = calendar.timegm(fields)
            if zone != "Z":
                sign = -1 if zone[0] == "+" else 1
                when += sign * (int(zone[1:3]) * 3600 + int(zone[-2:]) * 60)
        rest = (line[: m.start()] + line[m.end() :]).strip(" :|")
        rest = rest.removeprefix("ts=").strip()
        return when + frac, rest
    m = _BSD.match(line)
    if m is not None and m.group(1) in _MONTHS:
        h, mi, s = (int(g) for g in m.groups()[2:])
        when = time.mktime((year, _MONTHS[m.group(1)], int(m.group(2)), h, mi, s, 0, 0, -1))
        return when, line[m.end() :]
    return None


def entries(data_dir: str | os.PathLike[str], only: str | None = None) -> list[Entry]:
    """Every source's recent lines, merged in time order."""
    year = time.localtime().tm_year
    out: list[Entry] = []
    for source, path in sources(data_dir):
        if only and source != only:
            continue
        last = os.path.getmtime(path) if os.path.exists(path) else 0.0
        stamped: list[Entry] = []
        for raw in _tail(path):
            if not raw.strip():
                continue
            parsed = parse_time(raw, year)
            if parsed is None:
                when, text = (stamped[-1].time if stamped else last), raw
            else:
                when, text = parsed
            stamped.append(Entry(when, source, text))
        out.extend(stamped)
    out.sort(key=lambda e: e.time)  # stable: a source's own order holds within a second
    return out


def window(items: Iterable[Entry], since: float | None, until: float | None) -> list[Entry]:
    return [
        e
        for e in items
        if (since is None or e.time >= since) and (until is None or e.time <= until)
    ]


def parse_local(text: str) -> float:
    """Proxmox's since/until for syslog: "YYYY-MM-DD[ HH:MM[:SS]]", the host's time."""
    date, _, clock = text.partition(" ")
    y, mo, d = (int(x) for x in date.split("-"))
    parts = [int(x) for x in clock.split(":")] if clock else [0, 0]
    h, mi, s = (parts + [0])[:3]
    return datetime.datetime(y, mo, d, h, mi, s).timestamp()  # ValueError on 2026-13-45


def cursor(items: list[Entry], i: int) -> str:
    """A journal cursor: the entry's time (µs) and its place among entries of that time."""
    return f"corral-{int(items[i].time * 1_000_000)}-{_nth(items, i)}"


def position(items: list[Entry], text: str) -> int:
    """The index just after the entry a cursor names (its time and place at that time)."""
    m = re.fullmatch(r"corral-(\d+)-(\d+)", text)
    if m is None:
        raise ValueError("not a cursor of this node's log")
    micros, nth = int(m.group(1)), int(m.group(2))
    for i, e in enumerate(items):
        t = int(e.time * 1_000_000)
        if t > micros or (t == micros and _nth(items, i) > nth):
            return i
    return len(items)


def _nth(items: list[Entry], i: int) -> int:
    """How many entries before `i` share its time (cursor's disambiguator)."""
    t = int(items[i].time * 1_000_000)
    n = 0
    while i - n - 1 >= 0 and int(items[i - n - 1].time * 1_000_000) == t:
        n += 1
    return n
