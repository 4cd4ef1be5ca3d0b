"""TaskOwner: every background task ASAP starts is created, cancelled and awaited here."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Final, Generic, Protocol, TypeVar, cast

from asap.errors import InvalidState


_log = logging.getLogger(__name__)

_copy_context: Final = contextvars.copy_context
"""Bound once: compiled, a module attribute is looked up at every use (one eager call each)."""


class TaskOwner:
    """Owns a set of background tasks and guarantees none outlives :meth:`close`.

    A task that fails is logged when it finishes; a cancelled task is not an error. ``close()`` is
    idempotent and may be called from any task except one the owner itself runs.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def spawn(
        self,
        coro: Coroutine[object, object, None],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[None]:
        """Start ``coro`` as a task owned by this owner.

        Raises:
            InvalidState: the owner is closed (the coroutine is closed, not run).
        """
        if self._closed:
            coro.close()
            message = f"{self._name}: cannot start a task after close()"
            raise InvalidState(message)
        task = asyncio.get_running_loop().create_task(
            coro, name=name or self._name, context=context
        )
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error(
                "%s: background task %s failed",
                self._name,
                task.get_name(),
                exc_info=task.exception(),
            )

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        """True once close() has started."""
        return self._closed

    async def close(self) -> None:
        """Cancel every task and wait until all have finished."""
        self._closed = True
        current = asyncio.current_task()
        while self._tasks:
            pending = [task for task in self._tasks if task is not current]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``, or ``time.monotonic`` itself where that is all ``loop.time`` does.

    asyncio's own loops read ``time.monotonic()`` in a Python method; the hot path reads the clock
    several times per call, and the C function costs a fraction of it. Another loop (uvloop) keeps
    its own clock, and gets its own ``time``.
    """
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


class IdleSignal:
    """Whether work is in flight, and a wait for the moment none is (for a flag flipped per call).

    It does the job of an ``asyncio.Event`` set when idle: ``idle``/``busy``/``wait``.
    asyncio.Event is pure Python: flipping it twice per call cost more than the rest of the
    bookkeeping. Here ``busy``/``idle`` are two attribute writes, and a future exists only while
    something waits (a drain, a shutdown).
    """

    __slots__ = ("_idle", "_waiters")

    def __init__(self) -> None:
        self._idle = True
        self._waiters: list[asyncio.Future[None]] = []

    def is_idle(self) -> bool:
        """Whether no work is in flight."""
        return self._idle

    def busy(self) -> None:
        """Work started."""
        self._idle = False

    def idle(self) -> None:
        """No work is in flight any more: wake every waiter."""
        self._idle = True
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> None:
        """Return once no work is in flight (at once if none is)."""
        while not self._idle:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)


def start_eagerly(
    owner: TaskOwner, coro: Coroutine[object, object, None], *, name: str
) -> asyncio.Task[None] | None:
    """Run ``coro`` at once, in the caller, until it first suspends; then continue it in a task.

    A call whose work never suspends (a plain-function handler behind the built-in guards and the
    in-memory dedupe store) then completes inside the transport's read callback, with no task, no
    loop turn and no scheduling; one that suspends carries on in a task owned by ``owner``, from
    where it stopped, exactly as if it had been a task from the start (Python 3.12's eager task
    start, which 3.11 lacks). Code that needs a current task (``asyncio.timeout``, TaskGroup) must
    not run before the first suspension: the core hands such code off first
    (:func:`leave_eager`). Exceptions escaping ``coro`` are logged, as a task's would be.

    Returns:
        ``None`` if ``coro`` finished; else the task continuing it.
    """
    step = _first_step(coro)
    if isinstance(step, Finished):
        if step.error is not None:  # as TaskOwner logs a failed task
            _log.error("%s failed", name, exc_info=step.error)
        return None
    resumed, context = step
    return owner.spawn(resumed, name=name, context=context)


T = TypeVar("T")


class Finished(Generic[T]):
    """A coroutine that ended in its first step: its result, or the exception it raised."""

    __slots__ = ("error", "value")

    def __init__(self, value: T | None, error: Exception | None) -> None:
        self.value = value
        self.error = error

    def result(self) -> T:
        """The coroutine's result; raises what it raised."""
        if self.error is not None:
            raise self.error
        return cast("T", self.value)


def _first_step(
    coro: Coroutine[object, object, T],
) -> Finished[T] | tuple[_Resumed[T], contextvars.Context]:
    """Run ``coro`` in a fresh context until it suspends or ends.

    Returns:
        What it ended with (no future is made for that: most eager calls end here); else the
        continuation to hand to a task and the context that task must run in.
    """
    context = _copy_context()
    try:
        pending = context.run(coro.send, None)
    except StopIteration as stop:
        return Finished(stop.value, None)
    except Exception as exc:  # noqa: BLE001 - handed on, as a task would
        return Finished(None, exc)
    return _Resumed(coro, pending), context


class Eager(Protocol):
    """Something that knows whether its call runs eagerly (a CallContext)."""

    eager: bool


YIELD_INTERVAL: Final = 0.001
"""Seconds of handler time between the loop turns the core gives a handler that never awaits
(at its streamed writes), so it cannot hold the loop from every other call."""


def start_eagerly_for_result(
    coro: Coroutine[object, object, T], *, name: str
) -> Finished[T] | asyncio.Task[T]:
    """Like :func:`start_eagerly`, for a coroutine whose result is wanted (not owned by a TaskOwner).

    Returns:
        What it finished with if it finished without suspending (no future is made for it:
        most do); else the task continuing it.
    """
    step = _first_step(coro)
    if isinstance(step, Finished):
        return step
    resumed, context = step
    return asyncio.get_running_loop().create_task(resumed, name=name, context=context)


def start_eagerly_in(
    group: asyncio.TaskGroup, coro: Coroutine[object, object, None], *, name: str
) -> asyncio.Task[None] | None:
    """Like :func:`start_eagerly`, continuing in a task of ``group`` if ``coro`` suspends.

    An exception escaping ``coro`` before it suspends is raised here, in the caller, where the
    group's own task would have failed the group with it.

    Returns:
        ``None`` if ``coro`` finished; else the task continuing it.
    """
    step = _first_step(coro)
    if isinstance(step, Finished):
        if step.error is not None:
            raise step.error
        return None
    resumed, context = step
    return group.create_task(resumed, name=name, context=context)


async def leave_eager(call: Eager) -> None:
    """Suspend once if the call runs eagerly (:func:`start_eagerly`), so what follows runs in a task.

    Called before code that is not known to be eager-safe: an async handler, a guard or store
    that may need a current task (``asyncio.timeout``, TaskGroup) or do I/O.
    """
    if call.eager:
        call.eager = False
        await asyncio.sleep(0)


class _Resumed(Coroutine[object, object, T]):
    """A coroutine, started by hand and suspended on ``pending``, handed to a task to finish.

    The task's first ``send`` gets ``pending`` back (the future the coroutine waits on, which
    the task then waits on); every later ``send`` and every ``throw`` (a wake-up, CancelledError,
    also one thrown before the first step) goes straight to the coroutine.
    """

    __slots__ = ("_coro", "_pending", "_started")

    def __init__(self, coro: Coroutine[object, object, T], pending: object) -> None:
        self._coro = coro
        self._pending = pending
        self._started = False

    def send(self, value: object) -> object:
        if not self._started:
            self._started = True
            pending, self._pending = self._pending, None
            return pending
        return self._coro.send(value)

    def throw(self, typ: object, val: object = None, tb: object = None) -> object:
        self._started = True
        exc = typ if isinstance(typ, BaseException) else val
        if not isinstance(exc, BaseException):
            exc = typ() if isinstance(typ, type) and issubclass(typ, BaseException) else None
        if exc is None:  # pragma: no cover - asyncio throws exception instances
            message = f"cannot throw {typ!r}"
            raise TypeError(message)
        return self._coro.throw(exc)

    def close(self) -> None:
        self._coro.close()

    def __await__(self) -> Generator[object, object, T]:  # pragma: no cover - tasks only
        return self._coro.__await__()
