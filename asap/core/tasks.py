"""TaskOwner: every background task ASAP starts is created, cancelled and awaited here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

from asap.errors import InvalidState


_log = logging.getLogger(__name__)


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
        self, coro: Coroutine[object, object, None], *, name: str | None = None
    ) -> asyncio.Task[None]:
        """Start ``coro`` as a task owned by this owner.

        Raises:
            InvalidState: the owner is closed (the coroutine is closed, not run).
        """
        if self._closed:
            coro.close()
            message = f"{self._name}: cannot start a task after close()"
            raise InvalidState(message)
        task = asyncio.get_running_loop().create_task(coro, name=name or self._name)
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
