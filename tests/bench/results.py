"""Figures a benchmark hands to `tests/bench/report.py`.

A benchmark prints its figures for a reader and also calls `record()`; when
CORRAL_BENCH_JSON names a file (report.py sets it), each call appends one JSON
line there. `ours` is corral's figure, `raw` the raw tool's in the same run
(None when there is none), both in `unit`; lower is better for both.
"""

from __future__ import annotations

import json
import os
from typing import Any


def record(
    bench: str, measure: str, *, ours: float, raw: float | None, unit: str, **extra: Any
) -> None:
    path = os.environ.get("CORRAL_BENCH_JSON")
    if not path:
        return
    row = {"bench": bench, "measure": measure, "ours": round(ours, 3), "unit": unit,
           "raw": None if raw is None else round(raw, 3), **extra}  # fmt: skip
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
