"""Security rules that hold the same on every transport (issue 11); bridge- or gRPC-only attacks
are in ``tests/security``."""

from __future__ import annotations

import pytest

from asap import errors
from tests.conformance._service import Harness, as_dict, envelope


pytestmark = pytest.mark.asyncio

LIMIT = 16 * 1024
"""The default ``Limits.max_metadata_bytes`` (gRPC's default hard limit)."""


async def test_metadata_over_the_limit_is_resource_exhausted(harness: Harness) -> None:
    """Request metadata over 16 KiB fails the call with RESOURCE_EXHAUSTED."""
    with pytest.raises(errors.ResourceExhausted):
        await harness.client.send(envelope("inspect"), metadata=(("x-big", "a" * (LIMIT + 1)),))


async def test_many_small_metadata_entries_over_the_limit_are_resource_exhausted(
    harness: Harness,
) -> None:
    """Entries count 32 bytes each on top of key and value, so a flood of tiny ones is refused."""
    flood = tuple((f"x-{index}", "") for index in range(LIMIT // 32))
    with pytest.raises(errors.ResourceExhausted):
        await harness.client.send(envelope("inspect"), metadata=flood)


async def test_metadata_under_the_limit_reaches_the_handler(harness: Harness) -> None:
    """Request metadata well under the limit (7 KiB) is accepted."""
    response = await harness.client.send(envelope("inspect"), metadata=(("x-mid", "m" * 7000),))
    assert as_dict(response.envelope.task_response.result)["text"] == {"x-mid": "m" * 7000}


async def test_the_connection_goes_on_after_metadata_over_the_limit(harness: Harness) -> None:
    """A call refused for its metadata does not end the connection: the next call succeeds."""
    with pytest.raises(errors.ResourceExhausted):
        await harness.client.send(envelope("inspect"), metadata=(("x-big", "a" * (2 * LIMIT)),))
    response = await harness.client.send(envelope("echo", {"v": 1}))
    assert as_dict(response.envelope.task_response.result) == {"v": 1}


async def test_handlers_see_the_user_agent(harness: Harness) -> None:
    """The client's user agent is in the handler's metadata as ``user-agent``."""
    response = await harness.client.send(envelope("inspect"))
    seen = as_dict(response.envelope.task_response.result)
    keys = seen["keys"]
    assert seen["user_agent"]
    assert isinstance(keys, list)
    assert "user-agent" in keys
