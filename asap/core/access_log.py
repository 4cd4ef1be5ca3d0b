"""The access log: one structured line per call, the same on every transport.

``Server(access_log=True)`` (``asap serve --access-log``) adds :class:`AccessLog` to the interceptor
chain, ahead of authentication, so refused calls are logged too. Each call becomes one INFO record
on the ``asap.access`` logger whose message is a JSON object::

    {"method": "Send", "transport": "grpc", "code": "OK", "duration_ms": 0.8,
     "peer": "ipv4:127.0.0.1:51234", "principal": "urn:asap:agent:coordinator",
     "bytes_in": 1130, "bytes_out": 1174}

The same fields are on the record as ``record.asap`` (a dict) for structured handlers.
``principal`` is the authenticated subject, or "" for an anonymous call; ``bytes_*`` are the
serialized sizes of the messages read and written. Metadata is never logged, so nothing a caller
sends in it can reach the log; bearer tokens are not even in ``ctx.metadata`` (it holds them
redacted, see :class:`~asap.core.context.CallContext`). When the logger does not log INFO the
interceptor only passes the call on.
"""

from __future__ import annotations

import json
import logging
import time

from google.protobuf.message import Message

from asap.core.context import CallContext
from asap.core.interceptors import CallNext, Interceptor, outcome_of
from asap.core.service import ServerCall


ACCESS_LOGGER = "asap.access"
"""The logger the access log writes to."""

_log = logging.getLogger(ACCESS_LOGGER)


class _CountingCall:
    """A ServerCall that adds up the sizes of the messages read and written."""

    __slots__ = ("bytes_in", "bytes_out", "inner")

    def __init__(self, inner: ServerCall) -> None:
        self.inner = inner
        self.bytes_in = 0
        self.bytes_out = 0

    async def read(self) -> Message | None:
        message = await self.inner.read()
        if message is not None:
            self.bytes_in += message.ByteSize()
        return message

    async def write(self, message: Message) -> None:
        self.bytes_out += message.ByteSize()
        await self.inner.write(message)


class AccessLog(Interceptor):
    """Logs one line per call (see the module docstring)."""

    eager_safe = True
    """A clock and a log call, nothing that needs a task: a call may run eagerly through it."""

    def __init__(self, logger: logging.Logger = _log) -> None:
        self._logger = logger

    async def intercept(self, ctx: CallContext, call: ServerCall, call_next: CallNext) -> None:
        """Run the call and log its outcome."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            await call_next(ctx, call)
            return
        counted = _CountingCall(call)
        started = time.perf_counter()
        code = "OK"
        try:
            await call_next(ctx, counted)
        except BaseException as exc:
            code = outcome_of(ctx, exc).code.name
            raise
        finally:
            fields = {
                "method": ctx.method.name,
                "transport": ctx.transport,
                "code": code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "peer": ctx.peer,
                "principal": ctx.identity.subject if ctx.identity is not None else "",
                "bytes_in": counted.bytes_in,
                "bytes_out": counted.bytes_out,
            }
            logger.info("%s", json.dumps(fields, ensure_ascii=False), extra={"asap": fields})
