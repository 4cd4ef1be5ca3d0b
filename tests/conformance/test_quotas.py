"""Admission limits that hold the same on every transport (issue 11 item 3): the per-principal
concurrency quota, and failed authentication charged to the rate limit."""

from __future__ import annotations

import asyncio

import pytest

from asap import BearerAuth, Limits, errors
from tests.conformance._service import (
    GOOD_TOKEN,
    OTHER_SUBJECT,
    OTHER_TOKEN,
    HarnessFactory,
    as_dict,
    envelope,
)


pytestmark = pytest.mark.asyncio

QUOTA = 3
"""``Limits.max_calls_per_principal`` in the quota test."""


def _auth() -> BearerAuth:
    return BearerAuth.static({GOOD_TOKEN: "urn:asap:agent:tester", OTHER_TOKEN: OTHER_SUBJECT})


async def test_one_principal_cannot_hold_more_than_its_quota(make_harness: HarnessFactory) -> None:
    """A principal at its quota cannot start another call on any connection; others still can."""
    harness = await make_harness(
        auth=_auth(), token=GOOD_TOKEN, limits=Limits(max_calls_per_principal=QUOTA)
    )
    keys = [f"held-{index}" for index in range(QUOTA)]
    held = [
        asyncio.create_task(harness.client.send(envelope("park", {"key": key}))) for key in keys
    ]
    for key in keys:
        await harness.probe.entered(key)
    with pytest.raises(errors.PrincipalQuotaExceeded) as caught:
        await harness.connect(token=GOOD_TOKEN).send(envelope("echo"))
    assert caught.value.code == errors.Code.RESOURCE_EXHAUSTED
    assert caught.value.reason == "PRINCIPAL_QUOTA_EXCEEDED"
    other = harness.connect(sender=OTHER_SUBJECT, token=OTHER_TOKEN)
    response = await other.send(envelope("echo", {"other": 1}))
    assert as_dict(response.envelope.task_response.result) == {"other": 1}
    for key in keys:
        harness.probe.release(key)
    await asyncio.gather(*held)
    assert harness.server.dispatcher.principals == 0
    response = await harness.client.send(envelope("echo", {"after": 1}))
    assert as_dict(response.envelope.task_response.result) == {"after": 1}


async def test_failed_authentication_is_charged_to_the_rate_limit(
    make_harness: HarnessFactory,
) -> None:
    """Refused credentials cost a token each: past the burst, guessing is RATE_LIMITED."""
    harness = await make_harness(
        auth=_auth(), limits=Limits(rate_limit_per_second=0.1, rate_limit_burst=2)
    )
    guesser = harness.connect(token="guess-0")
    for _ in range(2):
        with pytest.raises(errors.Unauthenticated):
            await guesser.send(envelope("echo"))
    with pytest.raises(errors.RateLimited) as caught:
        await harness.connect(token="guess-1").send(envelope("echo"))
    assert caught.value.reason == "RATE_LIMITED"
    assert 0 < caught.value.retry_after <= 10.0
    with pytest.raises(errors.RateLimited):
        await harness.client.send(envelope("echo"))  # no credentials at all: the same bucket
    good = harness.connect(token=GOOD_TOKEN)
    response = await good.send(envelope("echo", {"good": 1}))
    assert as_dict(response.envelope.task_response.result) == {"good": 1}
