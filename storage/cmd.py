"""Running the backends' command-line tools: argv lists, timeouts, stderr in the error."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import IO

from corral.cluster.errors import CommandFailed, Unavailable

DEFAULT_TIMEOUT = 60.0


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    input: bytes | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` (never through a shell). Raises CommandFailed carrying stderr.

    With `stdout` given, output streams there (exports) instead of being captured.
    """
    argv = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            argv,
            input=input,
            stdin=stdin if input is None else None,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise Unavailable(f"command {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(cmd=" ".join(argv), stderr=f"timed out after {timeout:g} s") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip()
        raise CommandFailed(cmd=" ".join(argv), stderr=err or f"exit status {proc.returncode}")
    return proc


def out(argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run and return stdout as text."""
    return run(argv, timeout=timeout).stdout.decode(errors="replace")
