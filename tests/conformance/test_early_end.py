"""A client-streaming call the server ends while the caller is still sending reports the server's
status, not a transport failure of the caller's own making.

The server refuses these calls at once (no credentials), so the caller's next request is usually
on its way when the status arrives; each scenario runs several times because that race decides
which of the two a broken client reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from asap import errors
from asap.v1 import envelope_pb2
from tests.conformance._service import Harness, envelope


pytestmark = pytest.mark.asyncio

ROUNDS = 10
"""Calls per scenario (a broken client failed about nine in ten of them)."""
BURST = 200
"""Envelopes a caller tries to send on one refused call."""


async def _many() -> AsyncIterator[envelope_pb2.Envelope]:
    for _ in range(BURST):
        yield envelope("echo")


async def test_refused_stream_reports_the_servers_error(auth_harness: Harness) -> None:
    """A Stream refused while envelopes are still being sent fails with the server's error."""
    for _ in range(ROUNDS):
        stream = await auth_harness.client.stream()
        with contextlib.suppress(errors.InvalidState):  # the call is over: it takes no more
            for _ in range(BURST):
                await stream.send(envelope("echo"))
        with pytest.raises(errors.Unauthenticated) as caught:
            await anext(stream)
        assert caught.value.reason == "MISSING_CREDENTIALS"
        await stream.cancel()


async def test_refused_publish_reports_the_servers_error(auth_harness: Harness) -> None:
    """A Publish refused while envelopes are still being sent fails with the server's error."""
    for _ in range(ROUNDS):
        with pytest.raises(errors.Unauthenticated) as caught:
            await auth_harness.client.publish(_many())
        assert caught.value.reason == "MISSING_CREDENTIALS"
