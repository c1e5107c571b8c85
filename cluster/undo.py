"""Undo for multi-step changes (Incus's reverter).

    with Reverter() as undo:
        vol = storage.alloc(...)
        undo.add(lambda: storage.free(vol))
        write_config(...)
        undo.success()

Leaving the block without `success()` runs the undo steps in reverse order,
logging (not raising) their own failures so the original error surfaces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)


class Reverter:
    def __init__(self) -> None:
        self._steps: list[Callable[[], object]] = []
        self._done = False

    def add(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def success(self) -> None:
        self._done = True
        self._steps.clear()

    def revert(self) -> None:
        while self._steps:
            step = self._steps.pop()
            try:
                step()
            except Exception:  # noqa: BLE001 - undo must go on; the cause is re-raised by the caller
                log.exception("undo step failed")

    def __enter__(self) -> Reverter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.revert()
