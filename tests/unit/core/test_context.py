"""Unit tests for asap.core.context: deadline, principal and peer parsing, metadata, trailers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from asap.core.agent import Agent, Incoming
from asap.core.context import Identity
from asap.errors import NotFound
from asap.v1 import agent_service_pb2, payload_pb2


if TYPE_CHECKING:
    from tests.unit.core.conftest import Harness, Kit


@pytest.mark.asyncio
async def test_time_remaining_is_none_without_deadline(kit: Kit) -> None:
    """A call without a timeout has no deadline and no remaining time."""
    ctx = kit.ctx(timeout=None)
    assert ctx.deadline is None
    assert ctx.time_remaining() is None


@pytest.mark.asyncio
async def test_time_remaining_counts_down_from_timeout(kit: Kit) -> None:
    """The remaining time is positive and at most the timeout the call started with."""
    ctx = kit.ctx(timeout=30.0)
    remaining = ctx.time_remaining()
    assert remaining is not None
    assert 0.0 < remaining <= 30.0


@pytest.mark.asyncio
async def test_time_remaining_is_never_negative(kit: Kit) -> None:
    """Past the deadline the remaining time is zero, not negative."""
    ctx = kit.ctx(timeout=-5.0)
    assert ctx.time_remaining() == 0.0


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:1.2.3.4:5", "1.2.3.4"),
        ("ipv6:[::1]:5", "::1"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
        ("ipv6:%5B::1%5D:5", "::1"),
        ("example.org", "example.org"),
        ("example.org:8080", "example.org"),
        ("10.1.2.3", "10.1.2.3"),
    ],
)
def test_peer_host_strips_prefix_and_port(kit: Kit, peer: str, host: str) -> None:
    """peer_host drops the transport prefix, IPv6 brackets (also percent-encoded) and the port."""
    assert kit.ctx(peer=peer).peer_host == host


def test_principal_is_peer_host_when_anonymous(kit: Kit) -> None:
    """An anonymous caller is keyed by its address without the port."""
    assert kit.ctx(peer="ipv4:1.2.3.4:5").principal == "peer:1.2.3.4"
    assert kit.ctx(peer="ipv4:1.2.3.4:6").principal == "peer:1.2.3.4"


@pytest.mark.parametrize(
    ("peer", "principal"),
    [
        ("ipv6:[2001:db8:1:2::7]:5", "peer:2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2:ffff::1%5D:9", "peer:2001:db8:1:2::/64"),
        ("ipv6:[::ffff:1.2.3.4]:5", "peer:1.2.3.4"),
    ],
)
def test_anonymous_ipv6_principal_is_its_64(kit: Kit, peer: str, principal: str) -> None:
    """Every address of one IPv6 /64 is one anonymous principal (rotating them buys nothing)."""
    assert kit.ctx(peer=peer).principal == principal


def test_principal_is_identity_subject(kit: Kit) -> None:
    """An authenticated caller is keyed by its subject, whatever its address."""
    ctx = kit.ctx(peer="ipv6:[::1]:5")
    ctx.identity = Identity("urn:asap:agent:alice")
    assert ctx.principal == "urn:asap:agent:alice"


def test_metadata_value_returns_first_match(kit: Kit) -> None:
    """metadata_value returns the first value of a key and None for an absent key."""
    ctx = kit.ctx(metadata=(("x-a", "1"), ("x-b", b"\x00"), ("x-a", "2")))
    assert ctx.metadata_value("x-a") == "1"
    assert ctx.metadata_value("x-b") == b"\x00"
    assert ctx.metadata_value("x-c") is None


def test_trailing_metadata_accumulates_lowercased(kit: Kit) -> None:
    """Trailing metadata keeps the order it was set in, with lowercased keys."""
    ctx = kit.ctx()
    assert not ctx.trailing_metadata
    ctx.set_trailing_metadata(("X-One", "1"), ("x-two-bin", b"2"))
    ctx.set_trailing_metadata(("X-One", "again"))
    assert ctx.trailing_metadata == (("x-one", "1"), ("x-two-bin", b"2"), ("x-one", "again"))


def test_cancelled_flag(kit: Kit) -> None:
    """A context is not cancelled until the dispatcher marks it."""
    ctx = kit.ctx()
    assert not ctx.cancelled()
    ctx.mark_cancelled()
    assert ctx.cancelled()


def test_abort_raises_the_error(kit: Kit) -> None:
    """abort() raises the very error it is given."""
    error = NotFound("gone")
    with pytest.raises(NotFound) as caught:
        kit.ctx().abort(error)
    assert caught.value is error


@pytest.mark.asyncio
async def test_handler_trailers_survive_success_and_failure(kit: Kit, harness: Harness) -> None:
    """Trailing metadata a handler sets is on the context after the call, OK or failed."""
    agent: Agent = harness.agent

    @agent.on(payload_pb2.MessageSend)
    async def note(request: Incoming[payload_pb2.MessageSend]) -> None:
        request.call.set_trailing_metadata(("X-Handled", request.envelope.id))
        if request.payload.task_id == "fail":
            message = "no such task"
            raise NotFound(message)

    ok = await harness.call(
        "Send",
        agent_service_pb2.SendRequest(
            envelope=kit.envelope(payload_pb2.MessageSend(task_id="ok"), envelope_id="a")
        ),
    )
    failed = await harness.call(
        "Send",
        agent_service_pb2.SendRequest(
            envelope=kit.envelope(payload_pb2.MessageSend(task_id="fail"), envelope_id="b")
        ),
    )
    assert ok.error is None
    assert ok.ctx.trailing_metadata == (("x-handled", "a"),)
    assert isinstance(failed.error, NotFound)
    assert failed.ctx.trailing_metadata == (("x-handled", "b"),)
