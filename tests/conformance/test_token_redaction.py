"""Bearer tokens reach neither handlers, interceptors nor logs, the same on every transport.

``ctx.metadata`` holds ``[redacted]`` for each ``authorization`` value; the identity is in
``ctx.identity`` and authentication reads ``ctx.credentials``.
"""

from __future__ import annotations

import logging

import pytest

from asap import BearerAuth, errors
from asap._typing import Metadata
from asap.core.context import REDACTED, CallContext
from asap.interceptors import Interceptor
from tests.conformance._service import TESTER, HarnessFactory, as_dict, envelope


pytestmark = pytest.mark.asyncio

SECRET_TOKEN = "redact-me-7f3a9c"
"""A token the server accepts; no handler, interceptor or log record may show it."""


class MetadataPeek(Interceptor):
    """Records the metadata every call shows interceptors (the outermost one, before auth)."""

    def __init__(self) -> None:
        self.seen: list[Metadata] = []

    async def on_call(self, ctx: CallContext) -> None:
        self.seen.append(ctx.metadata)


async def test_handlers_and_interceptors_see_the_token_redacted(
    make_harness: HarnessFactory,
) -> None:
    """The handler sees ``authorization: [redacted]`` and the caller's identity; never the token."""
    peek = MetadataPeek()
    harness = await make_harness(
        auth=BearerAuth.static({SECRET_TOKEN: TESTER}), token=SECRET_TOKEN, interceptors=[peek]
    )
    response = await harness.client.send(envelope("inspect"))
    result = as_dict(response.envelope.task_response.result)
    assert result["identity"] == TESTER
    assert result["authorization"] == REDACTED
    assert SECRET_TOKEN not in repr(result)
    assert len(peek.seen) == 1
    assert ("authorization", REDACTED) in peek.seen[0]
    assert SECRET_TOKEN not in repr(peek.seen)


async def test_the_token_is_redacted_without_authentication_too(
    make_harness: HarnessFactory,
) -> None:
    """A server without auth still hides an ``authorization`` value from its handlers."""
    harness = await make_harness(token=SECRET_TOKEN)
    response = await harness.client.send(envelope("inspect"))
    result = as_dict(response.envelope.task_response.result)
    assert result["authorization"] == REDACTED
    assert result["identity"] == ""


async def test_no_log_record_carries_the_token(
    make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger at DEBUG (the libraries' handshake and frame logs too): no record has the token."""
    caplog.set_level(logging.DEBUG)  # the root: every library's logger that sets no level
    caplog.set_level(logging.DEBUG, logger="asap")
    auth = BearerAuth.static({SECRET_TOKEN: TESTER})
    harness = await make_harness(auth=auth, access_log=True, token=SECRET_TOKEN)
    await harness.client.send(envelope("echo", {"text": "hi"}))
    with pytest.raises(errors.Internal):
        await harness.client.send(envelope("crash"))
    wrong = harness.connect(token=f"{SECRET_TOKEN}-but-wrong")
    with pytest.raises(errors.Unauthenticated):
        await wrong.send(envelope("echo"))
    assert any(record.exc_info is not None for record in caplog.records)  # the crash was logged
    assert len(caplog.records) >= 3
    for record in caplog.records:
        assert SECRET_TOKEN not in record.getMessage()
        assert SECRET_TOKEN not in repr(record.__dict__)
    assert SECRET_TOKEN not in caplog.text
