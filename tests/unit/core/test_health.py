"""Unit tests for asap.core.health.HealthState.check: every request gets a status, never a raise."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from asap import errors
from asap.core.health import HealthState


if TYPE_CHECKING:
    from tests.unit.core.conftest import Kit


class _Undecodable:
    """A ServerCall whose request does not parse (what a transport's read raises then)."""

    async def read(self) -> Message | None:
        message = "the request does not parse as grpc.health.v1.HealthCheckRequest"
        raise errors.MalformedFrame(message)

    async def write(self, message: Message) -> None:
        raise AssertionError(message)


@pytest.mark.asyncio
async def test_undecodable_check_is_malformed_frame() -> None:
    """A Check whose bytes do not parse is answered INVALID_ARGUMENT (MALFORMED_FRAME)."""
    error = await HealthState().check(_Undecodable())
    assert isinstance(error, errors.MalformedFrame)
    assert error.code == errors.Code.INVALID_ARGUMENT


@pytest.mark.asyncio
async def test_check_answers_the_serving_state(kit: Kit) -> None:
    """Check answers NOT_SERVING, then SERVING; an unknown service is NotFound."""
    health = HealthState()
    before = kit.Call([health_pb2.HealthCheckRequest()])
    assert await health.check(before) is None
    health.set_serving(True)
    after = kit.Call([health_pb2.HealthCheckRequest(service="asap.v1.AgentService")])
    assert await health.check(after) is None
    statuses = [
        kit.only(call.written, health_pb2.HealthCheckResponse).status for call in (before, after)
    ]
    assert statuses == [
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    ]
    unknown = kit.Call([health_pb2.HealthCheckRequest(service="nope")])
    assert isinstance(await health.check(unknown), errors.NotFound)


def test_watch_slots_are_bounded() -> None:
    """At most ``max_watchers`` Watch slots are taken; a released one can be taken again."""
    health = HealthState(max_watchers=2)
    assert health.try_watch()
    assert health.try_watch()
    assert not health.try_watch()
    assert health.watchers == 2
    health.unwatch()
    assert health.try_watch()
    for _ in range(5):
        health.unwatch()
    assert health.watchers == 0
