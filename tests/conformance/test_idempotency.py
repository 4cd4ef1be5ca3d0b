"""Exactly-once delivery's edges behave the same on every transport: who shares outcomes, content
changes under one id, and retransmissions that arrive after the timestamp window."""

from __future__ import annotations

import time

import pytest

from asap import BearerAuth, errors
from asap.v1 import envelope_pb2
from tests.conformance._service import (
    GOOD_TOKEN,
    OTHER_SUBJECT,
    OTHER_TOKEN,
    TESTER,
    Harness,
    HarnessFactory,
    as_dict,
    envelope,
)
from tests.conftest import STORES


pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.parametrize("store_kind", STORES, indirect=True),  # in memory and in Redis
]

TOKENS = {GOOD_TOKEN: TESTER, OTHER_TOKEN: OTHER_SUBJECT}


def _copy(original: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    copy = envelope_pb2.Envelope()
    copy.CopyFrom(original)
    return copy


async def test_another_principal_claiming_the_sender_is_refused(
    make_harness: HarnessFactory,
) -> None:
    """With auth on (sender binding on by default), B sending as A with A's id is PERMISSION_DENIED."""
    harness = await make_harness(auth=BearerAuth.static(TOKENS))
    owner = harness.connect(token=GOOD_TOKEN)
    order = owner.prepare(envelope("count"))
    order.id = "order-42"
    first = await owner.send(_copy(order))
    intruder = harness.connect(token=OTHER_TOKEN, sender=TESTER)
    with pytest.raises(errors.PermissionDenied):
        await intruder.send(_copy(order))
    assert as_dict(first.envelope.task_response.result) == {"runs": 1}
    assert harness.probe.runs["count:order-42"] == 1


async def test_another_principal_gets_its_own_answer_without_sender_binding(
    make_harness: HarnessFactory,
) -> None:
    """With sender binding off, the dedupe key still includes the principal: B's envelope runs."""
    harness = await make_harness(auth=BearerAuth.static(TOKENS), bind_sender=False)
    owner = harness.connect(token=GOOD_TOKEN)
    order = owner.prepare(envelope("count"))
    order.id = "order-42"
    first = await owner.send(_copy(order))
    intruder = harness.connect(token=OTHER_TOKEN, sender=TESTER)
    second = await intruder.send(_copy(order))
    assert as_dict(first.envelope.task_response.result) == {"runs": 1}
    assert as_dict(second.envelope.task_response.result) == {"runs": 2}
    assert second.envelope.id != first.envelope.id


async def test_same_id_with_other_content_is_idempotency_key_reused(harness: Harness) -> None:
    """Re-using an envelope id for different content fails ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED."""
    request = harness.client.prepare(envelope("count", {"n": 1}))
    await harness.client.send(_copy(request))
    changed = _copy(request)
    changed.task_request.input.update({"n": 2})
    with pytest.raises(errors.IdempotencyKeyReused) as caught:
        await harness.client.send(changed)
    assert caught.value.code == errors.Code.ALREADY_EXISTS
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert harness.probe.runs[f"count:{request.id}"] == 1


async def test_retransmission_with_a_new_timestamp_and_trace_is_the_same_envelope(
    harness: Harness,
) -> None:
    """timestamp and trace_id are volatile: changing them still gets the stored answer."""
    request = harness.client.prepare(envelope("count"))
    first = await harness.client.send(_copy(request))
    again = _copy(request)
    again.trace_id = "another-trace"
    again.timestamp.seconds += 1
    second = await harness.client.send(again)
    assert second == first
    assert harness.probe.runs[f"count:{request.id}"] == 1


async def test_late_retransmission_gets_its_stored_answer(harness: Harness) -> None:
    """A retransmission past the timestamp window is answered from the store, not STALE_TIMESTAMP."""
    request = harness.client.prepare(envelope("count"))
    first = await harness.client.send(_copy(request))
    late = _copy(request)
    late.timestamp.seconds = int(time.time()) - 1000
    second = await harness.client.send(late)
    assert second == first
    assert harness.probe.runs[f"count:{request.id}"] == 1


async def test_stale_envelope_without_stored_outcome_is_stale(harness: Harness) -> None:
    """A stale envelope nobody processed is still refused STALE_TIMESTAMP (and not run)."""
    request = harness.client.prepare(envelope("count"))
    request.timestamp.seconds = int(time.time()) - 1000
    with pytest.raises(errors.InvalidEnvelope) as caught:
        await harness.client.send(request)
    assert caught.value.reason == "STALE_TIMESTAMP"
    assert harness.probe.runs[f"count:{request.id}"] == 0
