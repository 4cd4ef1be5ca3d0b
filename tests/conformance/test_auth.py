"""Bearer authentication and sender binding behave the same on every transport."""

from __future__ import annotations

import pytest

from asap import errors
from asap.v1 import manifest_pb2
from tests.conformance._service import (
    GOOD_TOKEN,
    OTHER_SUBJECT,
    OTHER_TOKEN,
    TESTER,
    Harness,
    as_dict,
    envelope,
)


pytestmark = pytest.mark.asyncio


async def test_missing_token_is_unauthenticated(auth_harness: Harness) -> None:
    """A call without credentials fails with Unauthenticated, reason MISSING_CREDENTIALS."""
    with pytest.raises(errors.Unauthenticated) as caught:
        await auth_harness.client.send(envelope("count", {"gate": "never"}))
    assert caught.value.code == errors.Code.UNAUTHENTICATED
    assert caught.value.reason == "MISSING_CREDENTIALS"
    assert not auth_harness.probe.event("entered:never").is_set()


async def test_wrong_token_is_unauthenticated(auth_harness: Harness) -> None:
    """A call with an unknown token fails with Unauthenticated, reason INVALID_TOKEN."""
    client = auth_harness.connect(token="wrong-token")
    with pytest.raises(errors.Unauthenticated) as caught:
        await client.send(envelope("echo"))
    assert caught.value.reason == "INVALID_TOKEN"
    assert "wrong-token" not in str(caught.value)


async def test_good_token_identity_reaches_the_handler(auth_harness: Harness) -> None:
    """A valid token's identity is in the handler's context."""
    client = auth_harness.connect(token=GOOD_TOKEN)
    response = await client.send(envelope("inspect"))
    assert as_dict(response.envelope.task_response.result)["identity"] == TESTER


async def test_token_as_call_metadata(auth_harness: Harness) -> None:
    """An authorization entry in a call's own metadata authenticates that call."""
    response = await auth_harness.client.send(
        envelope("inspect"), metadata=(("authorization", f"Bearer {GOOD_TOKEN}"),)
    )
    assert as_dict(response.envelope.task_response.result)["identity"] == TESTER


async def test_bind_sender_mismatch_is_sender_mismatch(auth_harness: Harness) -> None:
    """With bind_sender, an envelope whose sender is not the caller's identity is SenderMismatch."""
    client = auth_harness.connect(token=OTHER_TOKEN)
    with pytest.raises(errors.SenderMismatch) as caught:
        await client.send(envelope("echo"))
    assert caught.value.code == errors.Code.PERMISSION_DENIED
    assert caught.value.reason == "SENDER_MISMATCH"


async def test_bound_sender_matching_the_identity_is_accepted(auth_harness: Harness) -> None:
    """With bind_sender, an envelope sent as the caller's own identity is delivered."""
    client = auth_harness.connect(token=OTHER_TOKEN, sender=OTHER_SUBJECT)
    response = await client.send(envelope("inspect"))
    assert as_dict(response.envelope.task_response.result)["identity"] == OTHER_SUBJECT


async def test_not_a_bearer_token_is_missing_credentials(auth_harness: Harness) -> None:
    """An authorization value that is not 'Bearer <token>' is MISSING_CREDENTIALS."""
    with pytest.raises(errors.Unauthenticated) as caught:
        await auth_harness.client.send(
            envelope("echo"), metadata=(("authorization", f"Basic {GOOD_TOKEN}"),)
        )
    assert caught.value.reason == "MISSING_CREDENTIALS"


async def test_streaming_calls_need_credentials_too(auth_harness: Harness) -> None:
    """Subscribe and Stream without credentials fail with Unauthenticated from iteration."""
    async with await auth_harness.client.subscribe(envelope("echo")) as updates:
        with pytest.raises(errors.Unauthenticated):
            await anext(updates)
    async with await auth_harness.client.stream() as stream:
        await stream.send(envelope("echo"))
        with pytest.raises(errors.Unauthenticated):
            await anext(stream)


async def test_publish_needs_credentials(auth_harness: Harness) -> None:
    """Publish without credentials fails with Unauthenticated."""
    with pytest.raises(errors.Unauthenticated):
        await auth_harness.client.publish([envelope("echo")])


async def test_manifest_needs_credentials_and_advertises_bearer(auth_harness: Harness) -> None:
    """GetManifest requires a token too, and the manifest advertises bearer authentication."""
    with pytest.raises(errors.Unauthenticated):
        await auth_harness.client.get_manifest()
    manifest = await auth_harness.connect(token=GOOD_TOKEN).get_manifest()
    assert [advertised.type for advertised in manifest.auth_schemes] == [
        manifest_pb2.AUTH_SCHEME_TYPE_BEARER
    ]


async def test_bind_sender_checks_every_envelope_of_a_batch(auth_harness: Harness) -> None:
    """With bind_sender, one foreign sender in a batch refuses the whole batch."""
    client = auth_harness.connect(token=GOOD_TOKEN)
    foreign = envelope("echo")
    foreign.sender = OTHER_SUBJECT
    with pytest.raises(errors.SenderMismatch):
        await client.send_batch([envelope("echo"), foreign])
