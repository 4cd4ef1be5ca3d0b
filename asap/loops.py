"""Event loop choice: the standard asyncio loop, or uvloop (``pip install 'asap[uvloop]'``).

ASAP's code is the same on both; uvloop only replaces the loop's C-level machinery (selectors,
transports, timers), which is a large share of a small RPC's cost in Python.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import TypeVar


LOOPS = ("asyncio", "uvloop")
"""The loop names ``asap serve --loop`` accepts."""

T = TypeVar("T")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of a new event loop called ``name`` (``None``: asyncio's default).

    Raises:
        ValueError: ``name`` is not one of :data:`LOOPS`, or uvloop is not installed (the message
            says how to install it).
    """
    if name == "asyncio":
        return None
    if name != "uvloop":
        message = f"unknown event loop {name!r}; choose one of {', '.join(LOOPS)}"
        raise ValueError(message)
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        message = "--loop uvloop needs uvloop: pip install 'asap[uvloop]'"
        raise ValueError(message) from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[object, object, T], *, loop: str = "asyncio") -> T:
    """Run ``main`` to completion on a new event loop of the kind ``loop`` names.

    Raises:
        ValueError: See :func:`loop_factory` (``main`` is closed, not run).
    """
    try:
        factory = loop_factory(loop)
    except ValueError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
