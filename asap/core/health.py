"""Serving state shared by every transport (gRPC's health service reports it)."""

from __future__ import annotations

from collections.abc import Callable


class HealthState:
    """Whether the server is serving; listeners are told of every change."""

    def __init__(self) -> None:
        self._serving = False
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def serving(self) -> bool:
        """True between start and the beginning of shutdown."""
        return self._serving

    def subscribe(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(serving)`` now and on every change."""
        self._listeners.append(listener)
        listener(self._serving)

    def set_serving(self, serving: bool) -> None:
        """Change the state and notify listeners."""
        if serving != self._serving:
            self._serving = serving
            for listener in self._listeners:
                listener(serving)
