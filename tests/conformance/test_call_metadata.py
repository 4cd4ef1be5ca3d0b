"""Request and trailing metadata (text and ``-bin``) travel the same on every transport.

(Named ``test_call_metadata``: ``tests/unit/protocol/test_metadata.py`` exists and test basenames
must be unique in the rootless test tree.)
"""

from __future__ import annotations

import pytest

from asap import errors
from asap.v1 import agent_service_pb2
from tests.conformance._service import Harness, as_dict, echo_trailer_bytes, envelope


pytestmark = pytest.mark.asyncio

BINARY = bytes(range(256))
"""Every byte value, for ``-bin`` metadata."""


async def test_request_metadata_reaches_the_handler(harness: Harness) -> None:
    """Text and binary request metadata arrive in the handler's context unchanged."""
    response = await harness.client.send(
        envelope("inspect"),
        metadata=(("x-text", "hello, world ~!"), ("x-data-bin", BINARY)),
    )
    seen = as_dict(response.envelope.task_response.result)
    assert seen["text"] == {"x-text": "hello, world ~!"}
    assert seen["binary"] == {"x-data-bin": BINARY.hex()}


async def test_metadata_keys_arrive_lowercase(harness: Harness) -> None:
    """Metadata keys are lowercase on arrival."""
    response = await harness.client.send(envelope("inspect"), metadata=(("x-lower", "v"),))
    assert as_dict(response.envelope.task_response.result)["text"] == {"x-lower": "v"}


async def test_trailing_metadata_on_success(harness: Harness) -> None:
    """Trailing metadata a handler sets (text and -bin) reaches the caller of a successful call."""
    request = agent_service_pb2.SendRequest(envelope=harness.client.prepare(envelope("echo")))
    reply = await harness.client.invoke("Send", request, metadata=(("x-echo", "ok"),))
    assert reply.trailing_metadata == (
        ("x-echo-trailer", "ok"),
        ("x-echo-trailer-bin", echo_trailer_bytes("ok")),
    )


async def test_no_trailing_metadata_when_the_handler_sets_none(harness: Harness) -> None:
    """A call whose handler sets no trailers has empty trailing metadata."""
    request = agent_service_pb2.SendRequest(envelope=harness.client.prepare(envelope("echo")))
    reply = await harness.client.invoke("Send", request)
    assert reply.trailing_metadata == ()


async def test_trailing_metadata_on_error(harness: Harness) -> None:
    """Trailing metadata a handler set before raising is on the caller's error."""
    with pytest.raises(errors.Aborted) as caught:
        await harness.client.send(
            envelope("raise", {"class": "Aborted"}), metadata=(("x-echo", "failed"),)
        )
    assert caught.value.trailing_metadata == (
        ("x-echo-trailer", "failed"),
        ("x-echo-trailer-bin", echo_trailer_bytes("failed")),
    )


async def test_trailing_metadata_of_a_subscription(harness: Harness) -> None:
    """A streaming call's trailing metadata is available once it ended."""
    async with await harness.client.subscribe(
        envelope("echo"), metadata=(("x-echo", "stream"),)
    ) as updates:
        assert len([item async for item in updates]) == 1
        assert updates.trailing_metadata == (
            ("x-echo-trailer", "stream"),
            ("x-echo-trailer-bin", echo_trailer_bytes("stream")),
        )


async def test_trailing_metadata_of_a_failed_subscription(harness: Harness) -> None:
    """A failed streaming call carries the handler's trailers on the error and the stream."""
    async with await harness.client.subscribe(
        envelope("raise", {"class": "OutOfRange"}), metadata=(("x-echo", "sub-error"),)
    ) as updates:
        with pytest.raises(errors.OutOfRange) as caught:
            async for _ in updates:
                pass
        assert ("x-echo-trailer", "sub-error") in caught.value.trailing_metadata
        assert updates.trailing_metadata == caught.value.trailing_metadata


async def test_repeated_metadata_keys_keep_every_value(harness: Harness) -> None:
    """A key sent twice arrives twice, in order (the handler sees the first via metadata_value)."""
    response = await harness.client.send(
        envelope("inspect"), metadata=(("x-multi", "first"), ("x-multi", "second"))
    )
    assert as_dict(response.envelope.task_response.result)["text"] == {"x-multi": "second"}


@pytest.mark.parametrize(
    "metadata",
    [
        (("x-text", "non-ascii é"),),
        (("x-text", "line\nbreak"),),
        (("X-Upper", "v"),),
        (("", "v"),),
        (("grpc-reserved", "v"),),
        (("x-data-bin", "text for a -bin key"),),
        (("x-text", b"bytes for a text key"),),
    ],
    ids=[
        "non-ascii",
        "control-char",
        "uppercase-key",
        "empty-key",
        "reserved",
        "bin-str",
        "text-bytes",
    ],
)
async def test_invalid_metadata_is_refused_locally(
    harness: Harness, metadata: tuple[tuple[str, str | bytes], ...]
) -> None:
    """Metadata breaking the rules (lowercase keys, ASCII text, -bin bytes) fails locally with ValueError."""
    request = envelope("count")
    with pytest.raises(ValueError, match="metadata key"):
        await harness.client.send(request, metadata=metadata)
    response = await harness.client.send(request)
    assert as_dict(response.envelope.task_response.result) == {"runs": 1}
