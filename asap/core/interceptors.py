"""Server interceptors: the one extension point every call passes through, on every transport.

An :class:`Interceptor` wraps a call, continuation style (like grpc's and connect-python's
``call_next``)::

    class Timing(Interceptor):
        async def intercept(self, ctx: CallContext, call: ServerCall, call_next: CallNext) -> None:
            started = time.perf_counter()
            try:
                await call_next(ctx, call)
            except BaseException as exc:
                log(ctx.method.name, outcome_of(ctx, exc).code, time.perf_counter() - started)
                raise
            log(ctx.method.name, Code.OK, time.perf_counter() - started)

What an interceptor sees and may do, identically on gRPC and the WebSocket bridge:

- the method, request metadata, deadline, peer and (after authentication) identity, in ``ctx``;
  it may replace ``ctx.metadata`` for the interceptors and handler after it, and add trailers
  with ``ctx.set_trailing_metadata``;
- each message in and out, by passing ``call_next`` a wrapper of ``call`` (``read`` / ``write``);
  a wrapper may also change or drop messages, or raise to fail the call;
- the outcome: ``call_next`` returns for OK and raises the call's :class:`~asap.errors.AsapError`
  otherwise (an unexpected exception in the handler already became INTERNAL). Raising an
  AsapError before (or instead of) calling ``call_next`` rejects the call. When the caller goes
  away, or gRPC itself ends the call at its deadline, ``call_next`` raises
  :class:`asyncio.CancelledError` instead; :func:`outcome_of` names the outcome then
  (DEADLINE_EXCEEDED or CANCELLED). The interceptor must let the CancelledError propagate.

Interceptors run in the call's task, in the order given, the first one outermost; the chain is
built once (:func:`build_chain`), and an interceptor that only overrides :meth:`Interceptor.on_call`
or :meth:`Interceptor.on_envelopes` costs no extra coroutine per call. The guards ASAP ships
(:class:`~asap.core.middleware.BearerAuth`, ``RateLimit``, ``SenderBinding``) are interceptors.

Calls that never reach the Dispatcher are not intercepted on any transport: a path that is not an
AgentService method (answered UNIMPLEMENTED by the transport) and the standard health service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeAlias

from mypy_extensions import mypyc_attr

from asap.core.tasks import leave_eager
from asap.errors import AsapError, Cancelled, DeadlineExceeded, Internal


if TYPE_CHECKING:
    from asap.core.context import CallContext
    from asap.core.service import ServerCall
    from asap.v1 import envelope_pb2


CallNext: TypeAlias = "Callable[[CallContext, ServerCall], Awaitable[None]]"
"""The rest of the chain: the next interceptor, or in the end the RPC itself."""


@mypyc_attr(allow_interpreted_subclasses=True)
class Interceptor:
    """A hook run by the core around every call, whichever transport carries it.

    Override :meth:`intercept` for around-call behaviour; guards that only check something when a
    call starts or when envelopes arrive override :meth:`on_call` or :meth:`on_envelopes` instead.
    """

    async def intercept(self, ctx: CallContext, call: ServerCall, call_next: CallNext) -> None:
        """Run the call: by default :meth:`on_call`, then the rest of the chain."""
        await self.on_call(ctx)
        await call_next(ctx, call)

    async def on_call(self, ctx: CallContext) -> None:
        """Inspect a call before it runs (no message read yet); raise an AsapError to refuse it."""

    async def on_envelopes(
        self, ctx: CallContext, envelopes: Sequence[envelope_pb2.Envelope]
    ) -> None:
        """Inspect envelopes before they are processed; raise an AsapError to refuse them all.

        Called for each group of envelopes a call delivers (one for Send and each streamed
        message, all at once for SendBatch). A refusal fails the call for Send, SendBatch and
        Subscribe, and only that envelope on Publish and Stream.
        """


def _overrides(interceptor: Interceptor, name: str) -> bool:
    return getattr(type(interceptor), name) is not getattr(Interceptor, name)


def build_chain(interceptors: Sequence[Interceptor], terminal: CallNext) -> CallNext:
    """Compose ``interceptors`` (first outermost) around ``terminal``, once, ahead of any call.

    Interceptors that override neither ``intercept`` nor ``on_call`` are left out of the chain.
    """
    chain = terminal
    for interceptor in reversed(interceptors):
        chain = _link(interceptor, chain)
    return chain


def _link(interceptor: Interceptor, call_next: CallNext) -> CallNext:
    # A call running eagerly (asap.core.tasks.start_eagerly) moves into a task before code that
    # is not known never to need one: any interceptor but the built-in guards marked eager_safe.
    safe = bool(getattr(interceptor, "eager_safe", False))
    if not _overrides(interceptor, "intercept"):
        if not _overrides(interceptor, "on_call"):
            return call_next
        on_call = interceptor.on_call

        async def guard(ctx: CallContext, call: ServerCall) -> None:
            if ctx.eager and not safe:
                await leave_eager(ctx)
            await on_call(ctx)
            await call_next(ctx, call)

        return guard
    intercept = interceptor.intercept

    async def link(ctx: CallContext, call: ServerCall) -> None:
        if ctx.eager and not safe:
            await leave_eager(ctx)
        await intercept(ctx, call, call_next)

    return link


def envelope_guards(interceptors: Sequence[Interceptor]) -> list[Interceptor]:
    """The interceptors that check envelopes (override :meth:`Interceptor.on_envelopes`)."""
    return [each for each in interceptors if _overrides(each, "on_envelopes")]


def outcome_of(ctx: CallContext, exc: BaseException) -> AsapError:
    """The outcome of a call that ``call_next`` ended with ``exc``.

    An AsapError is the outcome itself; a cancellation is DEADLINE_EXCEEDED once the call's
    deadline has passed and CANCELLED otherwise; anything else (an interceptor's own bug) is
    INTERNAL, as the Dispatcher reports it.
    """
    if isinstance(exc, AsapError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        deadline = ctx.deadline
        if deadline is not None and ctx.now() >= deadline:
            return DeadlineExceeded()
        return Cancelled()
    return Internal()
