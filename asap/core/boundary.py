"""The one place where an arbitrary exception becomes an :class:`~asap.errors.AsapError`."""

from __future__ import annotations

import logging

from asap.errors import AsapError, Internal


_log = logging.getLogger("asap.server")

INTERNAL_MESSAGE = "internal error"
"""What the peer sees for an unexpected exception; the exception itself goes to the log only."""


def as_asap_error(exc: Exception, *, where: str) -> AsapError:
    """Return ``exc`` if it is an AsapError; otherwise log it with its traceback and return Internal.

    The peer never sees ``str(exc)`` of an unexpected exception: it may hold secrets or internals.
    """
    if isinstance(exc, AsapError):
        return exc
    _log.error("unexpected error in %s", where, exc_info=exc)
    error = Internal(INTERNAL_MESSAGE)
    error.__cause__ = exc
    return error
