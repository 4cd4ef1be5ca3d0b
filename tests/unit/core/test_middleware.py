"""Unit tests for asap.core.middleware: bearer auth, sender binding, rate limiting."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import pytest
from google.rpc import error_details_pb2

from asap import errors
from asap._typing import Metadata
from asap.core.context import Identity
from asap.core.middleware import BearerAuth, RateLimit, SenderBinding
from asap.v1 import agent_service_pb2, envelope_pb2


if TYPE_CHECKING:
    from asap.core.agent import Agent
    from tests.unit.core.conftest import FakeClock, Harness, Kit

ALICE = "urn:asap:agent:alice"
BOB = "urn:asap:agent:bob"
TOKENS = {"alice-token": ALICE, "bob-token": BOB}


def _bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def _send(envelope: envelope_pb2.Envelope) -> agent_service_pb2.SendRequest:
    return agent_service_pb2.SendRequest(envelope=envelope)


# -- BearerAuth -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "MISSING_CREDENTIALS"),
        ((("authorization", ""),), "MISSING_CREDENTIALS"),
        ((("authorization", "   "),), "MISSING_CREDENTIALS"),
        ((("authorization", b"Bearer alice-token"),), "MISSING_CREDENTIALS"),
        ((("authorization", "Basic YWxpY2U6cHc="),), "MISSING_CREDENTIALS"),
        ((("authorization", "Bearer"),), "MISSING_CREDENTIALS"),
        ((("authorization", "Bearer    "),), "MISSING_CREDENTIALS"),
        ((("authorization", "Bearer wrong-token"),), "INVALID_TOKEN"),
    ],
    ids=["absent", "empty", "blank", "bytes", "basic", "scheme-only", "blank-token", "invalid"],
)
@pytest.mark.asyncio
async def test_bearer_auth_refusals(kit: Kit, metadata: Metadata, reason: str) -> None:
    """Missing, malformed or non-Bearer credentials and unknown tokens are UNAUTHENTICATED."""
    ctx = kit.ctx(metadata=metadata)
    with pytest.raises(errors.Unauthenticated) as caught:
        await BearerAuth.static(TOKENS).on_call(ctx)
    assert caught.value.reason == reason
    assert "alice-token" not in caught.value.message
    assert ctx.identity is None


@pytest.mark.parametrize(
    "value", ["Bearer alice-token", "bearer alice-token", "  Bearer  alice-token "]
)
@pytest.mark.asyncio
async def test_bearer_auth_sets_identity(kit: Kit, value: str) -> None:
    """A valid token sets the identity; the principal becomes its subject."""
    ctx = kit.ctx(metadata=(("authorization", value),))
    await BearerAuth.static(TOKENS).on_call(ctx)
    assert ctx.identity == Identity(ALICE)
    assert ctx.principal == ALICE


@pytest.mark.asyncio
async def test_bearer_auth_passes_the_bare_token_to_the_verifier(kit: Kit) -> None:
    """The verifier sees the token without the scheme and surrounding spaces."""
    seen: list[str] = []

    async def verify(token: str) -> Identity | None:
        seen.append(token)
        return Identity(ALICE, {"scope": "send"})

    ctx = kit.ctx(metadata=_bearer("abc.def "))
    await BearerAuth(verify).on_call(ctx)
    assert seen == ["abc.def"]
    assert ctx.identity is not None
    assert ctx.identity.claims == {"scope": "send"}


@pytest.mark.asyncio
async def test_verifier_may_deny_permission(kit: Kit) -> None:
    """A verifier's PermissionDenied passes through unchanged."""
    denial = errors.PermissionDenied("not for you")

    async def verify(token: str) -> Identity | None:
        raise denial

    with pytest.raises(errors.PermissionDenied) as caught:
        await BearerAuth(verify).on_call(kit.ctx(metadata=_bearer("t")))
    assert caught.value is denial


@pytest.mark.asyncio
async def test_bearer_auth_refuses_calls_through_the_dispatcher(kit: Kit) -> None:
    """Through the dispatcher an unauthenticated call fails before the handler runs."""
    agent = kit.agent()
    ran: list[str] = []

    @agent.skill("spy")
    async def spy(request: object) -> None:
        ran.append("spy")

    harness = kit.Harness(agent, middleware=[BearerAuth.static(TOKENS)])
    result = await harness.call("Send", _send(kit.envelope(kit.task("spy"))))
    assert isinstance(result.error, errors.Unauthenticated)
    assert result.error.reason == "MISSING_CREDENTIALS"
    assert ran == []
    assert result.written == []
    ok = await harness.call(
        "Send", _send(kit.envelope(kit.task("spy"))), metadata=_bearer("alice-token")
    )
    assert ok.error is None
    assert ok.ctx.identity == Identity(ALICE)
    assert ran == ["spy"]


# -- SenderBinding ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sender_binding_refuses_a_foreign_sender(kit: Kit) -> None:
    """An envelope whose sender is not the authenticated identity is PERMISSION_DENIED."""
    harness = kit.Harness(kit.agent(), middleware=[BearerAuth.static(TOKENS), SenderBinding()])
    result = await harness.call(
        "Send", _send(kit.envelope(sender=BOB)), metadata=_bearer("alice-token")
    )
    assert isinstance(result.error, errors.SenderMismatch)
    assert result.error.code == errors.Code.PERMISSION_DENIED
    assert result.error.reason == "SENDER_MISMATCH"
    ok = await harness.call(
        "Send", _send(kit.envelope(sender=ALICE)), metadata=_bearer("alice-token")
    )
    assert ok.error is None


@pytest.mark.asyncio
async def test_sender_binding_refuses_a_batch_with_one_foreign_sender(kit: Kit) -> None:
    """One foreign sender refuses the whole batch; nothing in it is processed."""
    agent = kit.agent()
    ran: list[str] = []

    @agent.skill("spy")
    async def spy(request: object) -> None:
        ran.append("spy")

    harness = kit.Harness(agent, middleware=[BearerAuth.static(TOKENS), SenderBinding()])
    batch = agent_service_pb2.SendBatchRequest(
        envelopes=[
            kit.envelope(kit.task("spy"), envelope_id="1", sender=ALICE),
            kit.envelope(kit.task("spy"), envelope_id="2", sender=BOB),
        ]
    )
    result = await harness.call("SendBatch", batch, metadata=_bearer("alice-token"))
    assert isinstance(result.error, errors.SenderMismatch)
    assert ran == []


@pytest.mark.asyncio
async def test_sender_binding_ignores_anonymous_calls(kit: Kit) -> None:
    """Without an identity there is nothing to bind the sender to."""
    await SenderBinding().on_envelopes(kit.ctx(), [kit.envelope(sender=BOB)])


# -- RateLimit --------------------------------------------------------------------------------


def _limited(kit: Kit, clock: FakeClock, *, rate: float = 1.0, burst: float = 3.0) -> Harness:
    return kit.Harness(kit.agent(), middleware=[RateLimit(rate, burst, clock=clock)])


_ids = itertools.count()


async def _send_n(
    kit: Kit, harness: Harness, count: int, *, peer: str | None = None
) -> list[errors.AsapError | None]:
    """Send ``count`` fresh envelopes one after the other; return each call's outcome."""
    outcomes: list[errors.AsapError | None] = []
    for _ in range(count):
        envelope = kit.envelope(envelope_id=f"e{next(_ids)}")
        result = await harness.call("Send", _send(envelope), peer=peer or kit.PEER)
        outcomes.append(result.error)
    return outcomes


@pytest.mark.asyncio
async def test_rate_limit_burst_then_refusal_with_retry_info(kit: Kit, clock: FakeClock) -> None:
    """After the burst, calls are RATE_LIMITED with a positive retry_after sent as RetryInfo."""
    harness = _limited(kit, clock, rate=2.0, burst=3.0)
    assert await _send_n(kit, harness, 3) == [None, None, None]
    (refusal,) = await _send_n(kit, harness, 1)
    assert isinstance(refusal, errors.RateLimited)
    assert refusal.reason == "RATE_LIMITED"
    assert refusal.retry_after == pytest.approx(0.5)
    status = errors.to_status(refusal)
    assert status.code == errors.Code.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert any(packed.Unpack(retry) for packed in status.details)
    assert retry.retry_delay.ToNanoseconds() / 1e9 == pytest.approx(0.5)


@pytest.mark.asyncio
async def test_rate_limit_refills_with_time(kit: Kit, clock: FakeClock) -> None:
    """Tokens come back at the configured rate as the clock advances."""
    harness = _limited(kit, clock, rate=1.0, burst=2.0)
    assert await _send_n(kit, harness, 2) == [None, None]
    (refusal,) = await _send_n(kit, harness, 1)
    assert isinstance(refusal, errors.RateLimited)
    clock.advance(0.5)
    (still,) = await _send_n(kit, harness, 1)
    assert isinstance(still, errors.RateLimited)
    assert still.retry_after == pytest.approx(0.5)
    clock.advance(0.5)
    assert await _send_n(kit, harness, 1) == [None]
    clock.advance(100.0)
    outcomes = await _send_n(kit, harness, 3)
    assert outcomes[:2] == [None, None]
    assert isinstance(outcomes[2], errors.RateLimited)


@pytest.mark.asyncio
async def test_rate_limit_is_per_principal(kit: Kit, clock: FakeClock) -> None:
    """Each identity (or anonymous peer host) has its own bucket."""
    harness = kit.Harness(
        kit.agent(), middleware=[BearerAuth.static(TOKENS), RateLimit(1.0, 1.0, clock=clock)]
    )

    async def send(token: str, envelope_id: str) -> errors.AsapError | None:
        envelope = kit.envelope(envelope_id=envelope_id)
        return (await harness.call("Send", _send(envelope), metadata=_bearer(token))).error

    assert await send("alice-token", "a1") is None
    assert isinstance(await send("alice-token", "a2"), errors.RateLimited)
    assert await send("bob-token", "b1") is None
    assert isinstance(await send("bob-token", "b2"), errors.RateLimited)


@pytest.mark.asyncio
async def test_anonymous_rate_limit_is_per_host_not_per_port(kit: Kit, clock: FakeClock) -> None:
    """Anonymous callers are limited by host: a new port (connection) gets no new burst."""
    harness = _limited(kit, clock, rate=1.0, burst=1.0)
    assert await _send_n(kit, harness, 1, peer="ipv6:%5B::1%5D:1000") == [None]
    (refusal,) = await _send_n(kit, harness, 1, peer="ipv6:%5B::1%5D:1001")
    assert isinstance(refusal, errors.RateLimited)
    assert await _send_n(kit, harness, 1, peer="ipv4:10.9.9.9:1") == [None]


@pytest.mark.asyncio
async def test_send_batch_charges_every_envelope_all_or_nothing(kit: Kit, clock: FakeClock) -> None:
    """A batch costs one token per envelope; a batch that does not fit takes nothing."""
    harness = _limited(kit, clock, rate=1.0, burst=3.0)

    def batch(*ids: str) -> agent_service_pb2.SendBatchRequest:
        return agent_service_pb2.SendBatchRequest(
            envelopes=[kit.envelope(envelope_id=i) for i in ids]
        )

    first = await harness.call("SendBatch", batch("1", "2"))
    assert first.error is None
    refused = await harness.call("SendBatch", batch("3", "4"))
    assert isinstance(refused.error, errors.RateLimited)
    assert refused.error.retry_after == pytest.approx(1.0)
    assert refused.written == []
    # The refused batch took nothing: the one remaining token still pays for a single Send.
    assert await _send_n(kit, harness, 1) == [None]


@pytest.mark.asyncio
async def test_batch_larger_than_burst_is_resource_exhausted(
    kit: Kit, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch that could never fit the bucket is RESOURCE_EXHAUSTED, not an internal error."""
    harness = _limited(kit, clock, rate=1.0, burst=2.0)
    request = agent_service_pb2.SendBatchRequest(
        envelopes=[kit.envelope(envelope_id=str(i)) for i in range(3)]
    )
    result = await harness.call("SendBatch", request)
    assert isinstance(result.error, errors.ResourceExhausted)
    assert result.error.code == errors.Code.RESOURCE_EXHAUSTED
    assert not isinstance(result.error, errors.RateLimited)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    # Nothing was taken from the bucket.
    assert await _send_n(kit, harness, 2) == [None, None]


@pytest.mark.asyncio
async def test_get_manifest_costs_one_token(kit: Kit, clock: FakeClock) -> None:
    """A call without envelopes (GetManifest) is charged once, when it starts."""
    harness = _limited(kit, clock, rate=1.0, burst=1.0)
    first = await harness.call("GetManifest", agent_service_pb2.GetManifestRequest())
    assert first.error is None
    second = await harness.call("GetManifest", agent_service_pb2.GetManifestRequest())
    assert isinstance(second.error, errors.RateLimited)


@pytest.mark.asyncio
async def test_publish_refuses_only_the_envelopes_over_the_limit(
    kit: Kit, clock: FakeClock
) -> None:
    """In a Publish stream each envelope is charged; those over the limit fail on their own."""
    harness = _limited(kit, clock, rate=1.0, burst=2.0)
    requests = [
        agent_service_pb2.PublishRequest(envelope=kit.envelope(envelope_id=str(i)))
        for i in range(3)
    ]
    result = await harness.call("Publish", *requests)
    assert result.error is None
    (response,) = result.written
    assert isinstance(response, agent_service_pb2.PublishResponse)
    outcomes = [r.WhichOneof("outcome") for r in response.results]
    assert outcomes == ["envelope", "envelope", "error"]
    refusal = errors.from_status(response.results[2].error)
    assert isinstance(refusal, errors.RateLimited)


@pytest.mark.asyncio
async def test_disabled_rate_limit_never_refuses(kit: Kit, clock: FakeClock, agent: Agent) -> None:
    """A rate of zero disables the limiter."""
    harness = kit.Harness(agent, middleware=[RateLimit(0.0, 1.0, clock=clock)])
    assert await _send_n(kit, harness, 5) == [None] * 5


@pytest.mark.asyncio
async def test_empty_batch_costs_one_token(kit: Kit, clock: FakeClock) -> None:
    """A SendBatch without envelopes is a call that carries none: it costs one token."""
    harness = _limited(kit, clock, rate=1.0, burst=2.0)
    for _ in range(2):
        result = await harness.call("SendBatch", agent_service_pb2.SendBatchRequest())
        assert result.error is None
    refused = await harness.call("SendBatch", agent_service_pb2.SendBatchRequest())
    assert isinstance(refused.error, errors.RateLimited)


def test_only_in_memory_rate_limits_are_eager_safe() -> None:
    """Shared buckets do I/O, so a call must be in a task before it reaches them."""

    class Buckets:
        async def acquire(self, principal: str, rate: float, burst: float, cost: int) -> float:
            return 0.0

    assert RateLimit(rate=1.0, burst=1).eager_safe
    assert not RateLimit(rate=1.0, burst=1, shared=Buckets()).eager_safe
