"""Detached: run a coroutine to its end outside any task, where no cancellation can reach it.

grpc.aio's ``context.write()`` starts a batch in grpc core and awaits the batch's future. If the
task awaiting it is cancelled, asyncio cancels that future while the batch is still in core, and
the call can no longer be ended with a status (see ``server._Writes``). A task of its own behind
``asyncio.shield`` avoids that, at the price of a Task, a shield and two loop turns per streamed
response. :class:`Detached` needs neither: it takes the coroutine's first step at once (the batch
starts now) and every later step from the done callback of the future the coroutine waits on.
Its caller awaits :attr:`Detached.done`, which cancelling the caller cancels without reaching the
coroutine; :meth:`Detached.ended` tells when the coroutine has really finished.

Only for coroutines that await plain asyncio futures (or ``asyncio.sleep(0)``) and need no
current task, as grpc.aio's write does: nothing that uses ``asyncio.timeout``, a TaskGroup or
``asyncio.current_task()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine


class Detached:
    """Drives ``coro`` from its futures' callbacks; :attr:`done` gets its outcome.

    Args:
        coro: The coroutine; its first step runs inside the constructor.
    """

    __slots__ = ("_coro", "_ended", "_loop", "done", "running")

    def __init__(self, coro: Coroutine[object, object, None]) -> None:
        self._coro = coro
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        """The coroutine's outcome (cancelled if it raised CancelledError itself). Cancelling it
        (the waiter was cancelled) leaves the coroutine running; its outcome is then dropped."""
        self.running = True
        """False once the coroutine has ended."""
        self._ended: asyncio.Future[None] | None = None
        self._step()

    def ended(self) -> asyncio.Future[None]:
        """A future done once the coroutine has ended (whatever became of :attr:`done`)."""
        if self._ended is None:
            self._ended = self._loop.create_future()
            if not self.running:
                self._ended.set_result(None)
        return self._ended

    def _step(self, _woken_by: object = None) -> None:
        try:
            waits_on = self._coro.send(None)
        except StopIteration:
            self._end(None)
            return
        except asyncio.CancelledError as cancelled:
            self._end(cancelled)
            return
        except Exception as exc:  # noqa: BLE001 - handed on through the future, as a task would
            self._end(exc)
            return
        if isinstance(waits_on, asyncio.Future):
            # The handshake a Task makes with a future its coroutine waits on.
            waits_on._asyncio_future_blocking = False  # noqa: SLF001 - asyncio's own protocol
            waits_on.add_done_callback(self._step)
        elif waits_on is None:  # a bare yield (asyncio.sleep(0)): one loop turn
            self._loop.call_soon(self._step)
        else:
            self._coro.close()
            self._end(TypeError(f"Detached cannot wait on {waits_on!r}"))

    def _end(self, error: BaseException | None) -> None:
        self.running = False
        if self._ended is not None:
            self._ended.set_result(None)
        done = self.done
        if done.done():  # the waiter went away: nobody wants the outcome
            return
        if error is None:
            done.set_result(None)
        elif isinstance(error, asyncio.CancelledError):
            done.cancel()
        else:
            done.set_exception(error)
