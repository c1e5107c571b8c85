"""Structured log lines (logfmt): `ts=... level=... logger=... msg="..."`."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        msg = record.getMessage().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        line = (
            f"ts={ts}.{int(record.msecs):03d}Z level={record.levelname.lower()} "
            f'logger={record.name} thread={record.threadName} msg="{msg}"'
        )
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", "\\n").replace('"', "'")
            line += f' exc="{exc}"'
        return line


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # grpc and cheroot are chatty at info.
    for noisy in ("cheroot", "grpc", "aetcd"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def add_file_log(path: Path, *, max_bytes: int = 8 << 20, keep: int = 2) -> None:
    """Also write the log to `path` (rotated): the node's own log file, which
    /nodes/{node}/syslog reads whoever started the daemon and wherever its stderr goes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=keep)
    handler.setFormatter(LogfmtFormatter())
    logging.getLogger().addHandler(handler)
