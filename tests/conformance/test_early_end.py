"""Client-streaming calls that end while the caller is still sending: the caller learns why.

A call the server ends early reports the server's status, not a transport failure of the caller's
own making. The server refuses these calls at once (no credentials), so the caller's next request
is usually on its way when the status arrives; each scenario runs several times because that race
decides which of the two a broken client reports. A request iterator that raises ends the call
with Cancelled, caused by the iterator's exception.
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


class _IteratorFailed(Exception):
    """What the caller's request iterator raises."""


async def _failing() -> AsyncIterator[envelope_pb2.Envelope]:
    yield envelope("echo")
    raise _IteratorFailed


async def test_failing_request_iterator_cancels_the_call(harness: Harness) -> None:
    """A Publish whose request iterator raises fails with Cancelled, caused by that exception."""
    with pytest.raises(errors.Cancelled) as caught:
        await harness.client.publish(_failing())
    assert caught.value.reason == "CANCELLED"
    assert isinstance(caught.value.__cause__, _IteratorFailed)
    results = await harness.client.publish([envelope("echo")])  # the client goes on
    assert len(results) == 1
