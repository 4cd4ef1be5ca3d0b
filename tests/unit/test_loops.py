"""asap.loops: the event loop `asap serve --loop` runs on."""

from __future__ import annotations

import asyncio
import inspect
import sys

import pytest
import uvloop

from asap import loops


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_uvloop_runs_the_coroutine_on_a_uvloop_loop() -> None:
    assert loops.run(_loop_type(), loop="uvloop") is uvloop.Loop


def test_asyncio_runs_on_the_default_loop() -> None:
    assert not issubclass(loops.run(_loop_type(), loop="asyncio"), uvloop.Loop)


def test_an_unknown_loop_is_refused_and_the_coroutine_closed() -> None:
    coro = _loop_type()
    with pytest.raises(ValueError, match="unknown event loop"):
        loops.run(coro, loop="trio")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited" warning


def test_missing_uvloop_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import now fails as if not installed
    with pytest.raises(ValueError, match=r"asap\[uvloop\]"):
        loops.loop_factory("uvloop")
