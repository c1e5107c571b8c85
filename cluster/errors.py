"""Errors that carry their HTTP status.

Every layer (store, drivers, storage plugins, API) raises these; the API maps
them to a response in one place (corral.web.app), so bad input becomes a 400
naming the parameter and never a 500 with a traceback.
"""

from __future__ import annotations

from typing import Any


class CorralError(Exception):
    """Base class: a message template, an HTTP status, optional per-parameter errors."""

    status: int = 500
    msg_fmt: str = "internal error"

    def __init__(
        self, message: str | None = None, *, errors: dict[str, str] | None = None, **kwargs: Any
    ) -> None:
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError, ValueError):
                message = self.msg_fmt
        super().__init__(message)
        self.message = message
        self.errors = dict(errors or {})
        self.kwargs = kwargs

    def __str__(self) -> str:
        return self.message


class ParamError(CorralError):
    """Bad input. `errors` maps each bad parameter to its reason (Proxmox's shape)."""

    status = 400
    msg_fmt = "Parameter verification failed."

    def __init__(self, errors: dict[str, str] | None = None, message: str | None = None) -> None:
        super().__init__(message, errors=errors)

    @classmethod
    def one(cls, param: str, reason: str) -> ParamError:
        return cls({param: reason})


class Unauthorized(CorralError):
    status = 401
    msg_fmt = "authentication failure"


class Forbidden(CorralError):
    status = 403
    msg_fmt = "Permission check failed"


class NotFound(CorralError):
    status = 404
    msg_fmt = "%(what)s does not exist"


class Conflict(CorralError):
    """A concurrent change won (digest mismatch, lock held, name taken)."""

    status = 409
    msg_fmt = "conflict"


class NotSupported(CorralError):
    """The backend or driver cannot do this operation."""

    status = 501
    msg_fmt = "%(what)s is not supported"


class NotImplementedPath(CorralError):
    status = 501
    msg_fmt = "Method '%(method)s %(path)s' not implemented"


class Unavailable(CorralError):
    """A dependency (etcd, libvirt, a node) cannot be reached in time."""

    status = 503
    msg_fmt = "service unavailable"


class NotQuorate(Unavailable):
    msg_fmt = "cluster not quorate"


class CommandFailed(CorralError):
    """An external command failed; the message carries its stderr."""

    status = 500
    msg_fmt = "command %(cmd)s failed: %(stderr)s"
