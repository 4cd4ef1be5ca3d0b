"""Probes report to their listeners only while added, and cost nothing without one."""

from __future__ import annotations

import pytest

from asap.core import probes
from asap.core.dedupe import InMemoryDedupeStore, Owned


class Recorder:
    """Records every probe event."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def connection_opened(self, transport: str) -> None:
        """Record."""
        self.events.append(("opened", transport))

    def connection_closed(self, transport: str, code: int | None, *, was_open: bool) -> None:
        """Record."""
        self.events.append(("closed", transport, code, was_open))

    def flow_stalled(self, transport: str, side: str) -> None:
        """Record."""
        self.events.append(("stalled", transport, side))

    def dedupe_hit(self) -> None:
        """Record."""
        self.events.append(("hit",))

    def dedupe_evicted(self, count: int) -> None:
        """Record."""
        self.events.append(("evicted", count))

    def rate_limited(self) -> None:
        """Record."""
        self.events.append(("limited",))


def test_reports_reach_listeners_only_while_added() -> None:
    """Every report goes to each listener added, and none after it is removed."""
    recorder = Recorder()
    assert probes.PROBES.active is None
    probes.PROBES.add(recorder)
    probes.PROBES.add(recorder)  # idempotent
    try:
        probes.connection_opened("ws")
        probes.connection_closed("ws", 1000, was_open=True)
        probes.flow_stalled("ws", "client")
        probes.dedupe_hit()
        probes.dedupe_evicted(0)  # nothing evicted: not reported
        probes.dedupe_evicted(2)
        probes.rate_limited()
    finally:
        probes.PROBES.remove(recorder)
    probes.rate_limited()
    assert probes.PROBES.active is None
    assert recorder.events == [
        ("opened", "ws"),
        ("closed", "ws", 1000, True),
        ("stalled", "ws", "client"),
        ("hit",),
        ("evicted", 2),
        ("limited",),
    ]


@pytest.mark.asyncio
async def test_in_memory_dedupe_reports_evictions() -> None:
    """Outcomes pushed out of a full in-memory store are reported as evictions."""
    recorder = Recorder()
    store = InMemoryDedupeStore(max_entries=1)
    probes.PROBES.add(recorder)
    try:
        for key in ("a", "b", "c"):
            claim = await store.claim(key, b"fingerprint")
            assert isinstance(claim, Owned)
            await store.complete(key, claim, b"outcome")
    finally:
        probes.PROBES.remove(recorder)
    assert recorder.events == [("evicted", 1), ("evicted", 1)]
