"""The Dispatcher: every call on every transport runs through :meth:`Dispatcher.handle`.

It runs the call through the interceptor chain (:mod:`asap.core.interceptors`, built once here),
whose end looks up the RPC, enforces the server-wide concurrency limit and the call's deadline and
runs the RPC, and turns whatever ends the call into an outcome: None for OK, otherwise an
:class:`~asap.errors.AsapError`. It is the only place a call's exception becomes a wire status;
interceptors see that AsapError raised from their ``call_next``.

Deadlines and cancellation hold for every handler, also one that never awaits: besides the asyncio
timeout (or the transport's own enforcement, on gRPC) the Dispatcher checks the deadline and
``ctx.cancelled()`` before each streamed write and when the RPC returns, and gives the event loop
one turn after each streamed write, so a timer, a peer's Cancel or the transport's cancellation
reaches the call's task between two messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.protobuf.message import Message

from asap.core.boundary import as_asap_error
from asap.core.context import CallContext
from asap.core.interceptors import Interceptor, build_chain
from asap.core.service import AgentServiceCore, ServerCall, nowait_writer, read_wait_probe
from asap.core.tasks import YIELD_INTERVAL, IdleSignal
from asap.errors import (
    AsapError,
    Cancelled,
    DeadlineExceeded,
    PrincipalQuotaExceeded,
    ShuttingDown,
    TooManyCalls,
    UnknownMethod,
)
from asap.protocol.admission import Counts


def _first_leaf(exc: BaseException) -> BaseException:
    """Unwrap exception groups (from task groups inside an RPC) to the first real exception."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _check_live(ctx: CallContext, now: float | None = None) -> None:
    """Raise if the call was cancelled or its deadline has passed (marking it cancelled).

    ``now`` is the loop's time if the caller has it (else it is read here).
    """
    if ctx.cancelled():
        raise Cancelled
    deadline = ctx.deadline
    if deadline is not None:
        if now is None:
            now = ctx.now()
        if now >= deadline:
            ctx.mark_cancelled()
            raise DeadlineExceeded


class _GuardedCall:
    """The ServerCall an RPC with streamed responses sees: every write checks the call is live.

    A transport's write need not suspend (the bridge's returns at once while the caller's credit
    lasts), so a handler that never awaits would otherwise hold the loop: no deadline timer, Cancel
    frame or transport cancellation could reach it. A write therefore gives the loop one turn once
    :data:`YIELD_INTERVAL` has passed since the last one, which bounds how long such a handler runs
    past a Cancel or its deadline without paying a loop turn for every message. A read that waits
    for the peer gives the loop that turn too, when the transport says so (``read_would_wait``):
    a Stream answering batch after batch then never owes one.
    """

    __slots__ = ("_call", "_ctx", "_loop", "_read_would_wait", "_try_write", "_yielded_at")

    def __init__(self, ctx: CallContext, call: ServerCall) -> None:
        self._ctx = ctx
        self._call = call
        self._try_write = nowait_writer(call)
        self._read_would_wait = read_wait_probe(call)
        self._loop = asyncio.get_running_loop()
        self._yielded_at = self._loop.time()

    async def read(self) -> Message | None:
        would_wait = self._read_would_wait
        if would_wait is None or not would_wait():
            return await self._call.read()
        message = await self._call.read()
        self._yielded_at = self._loop.time()  # it waited: the loop had its turn
        return message

    async def write(self, message: Message) -> None:
        now = self._loop.time()
        _check_live(self._ctx, now)
        await self._call.write(message)
        if now - self._yielded_at >= YIELD_INTERVAL:
            self._yielded_at = now
            await asyncio.sleep(0)

    def try_write(self, message: Message) -> bool:
        """See :class:`~asap.core.service.ServerCall`; False when the loop's turn is due."""
        inner = self._try_write
        if inner is None:
            return False
        now = self._loop.time()
        if now - self._yielded_at >= YIELD_INTERVAL:
            return False  # write() gives the loop its turn
        _check_live(self._ctx, now)
        return inner(message)


class Dispatcher:
    """Runs calls for every transport.

    Args:
        service: The RPC implementations.
        interceptors: Run around each call, the first outermost (guards, observers).
        max_concurrent_calls: Calls beyond this many in flight fail with RESOURCE_EXHAUSTED.
        max_calls_per_principal: Calls one principal (``ctx.principal``, known once the
            interceptors have authenticated the call) may have in flight, over every connection
            and transport; beyond it RESOURCE_EXHAUSTED (PRINCIPAL_QUOTA_EXCEEDED). 0: no quota.
    """

    def __init__(
        self,
        service: AgentServiceCore,
        interceptors: Sequence[Interceptor] = (),
        *,
        max_concurrent_calls: int = 1000,
        max_calls_per_principal: int = 0,
    ) -> None:
        self._service = service
        self._chain = build_chain(tuple(interceptors), self._serve)
        self._max_calls = max_concurrent_calls
        self._in_flight = 0
        self._per_principal = Counts(max_calls_per_principal)
        """Calls in flight by principal; a principal is forgotten when its last call ends, so
        the map never holds more entries than there are calls in flight."""
        self._idle = IdleSignal()
        self.draining = False
        """When True new calls fail with UNAVAILABLE (SHUTTING_DOWN); in-flight calls go on."""

    @property
    def in_flight(self) -> int:
        """How many calls are running."""
        return self._in_flight

    @property
    def principals(self) -> int:
        """How many principals have a call in flight (the quota map's size; 0 with no quota)."""
        return len(self._per_principal)

    async def wait_idle(self) -> None:
        """Wait until no call is in flight."""
        await self._idle.wait()

    async def handle(self, ctx: CallContext, call: ServerCall) -> AsapError | None:
        """Run one call to completion and return its outcome (None means OK).

        A cancellation of the calling task (the caller went away) marks the context cancelled and
        propagates; everything else is returned as an AsapError, never raised.
        """
        try:
            await self._chain(ctx, call)
        except AsapError as error:
            return error
        except asyncio.CancelledError:
            ctx.mark_cancelled()
            raise
        except Exception as exc:  # noqa: BLE001 - an interceptor's own failure becomes INTERNAL
            return as_asap_error(_first_leaf(exc), where=ctx.method.path)  # type: ignore[arg-type]
        return None

    async def _serve(self, ctx: CallContext, call: ServerCall) -> None:
        """The end of the interceptor chain: limits, deadline, the RPC; raises the outcome."""
        if self.draining:
            raise ShuttingDown
        if self._in_flight >= self._max_calls:
            text = f"more than {self._max_calls} calls in flight"
            raise TooManyCalls(text)
        rpc = self._service.rpcs.get(ctx.method.name)
        if rpc is None:
            text = f"unknown method {ctx.method.path}"
            raise UnknownMethod(text)
        quota = self._per_principal
        principal = ctx.principal if quota.limit else None  # not worked out when there is no quota
        if principal is not None and not quota.try_acquire(principal):
            text = f"more than {quota.limit} calls in flight for {principal}"
            raise PrincipalQuotaExceeded(text)
        if not self._in_flight:
            self._idle.busy()
        self._in_flight += 1
        try:
            if ctx.method.server_streaming:
                call = _GuardedCall(ctx, call)
            if ctx.deadline is None or ctx.deadline_enforced_by_transport:
                # No deadline, or the transport cancels the call at its deadline and reports
                # DEADLINE_EXCEEDED itself (gRPC): an asyncio timeout here would only cost time.
                await rpc(ctx, call)
            else:
                async with asyncio.timeout_at(ctx.deadline) as scope:
                    await rpc(ctx, call)
            # A handler that never awaited may return past its deadline: that is not OK either.
            _check_live(ctx)
        except asyncio.CancelledError:
            ctx.mark_cancelled()
            raise
        except TimeoutError as exc:
            if (
                ctx.deadline is not None
                and not ctx.deadline_enforced_by_transport
                and scope.expired()
            ):
                ctx.mark_cancelled()
                raise DeadlineExceeded from None
            raise as_asap_error(exc, where=ctx.method.path) from None
        except AsapError:
            raise
        except Exception as exc:  # noqa: BLE001 - the call boundary: every failure becomes a status
            raise as_asap_error(_first_leaf(exc), where=ctx.method.path) from None  # type: ignore[arg-type]
        finally:
            if principal is not None:
                quota.release(principal)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.idle()
