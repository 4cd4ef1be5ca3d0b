"""Client call options: shared per timeout for calls that add no metadata, bounded, never stale."""

from __future__ import annotations

import pytest

from asap.client import _MAX_CACHED_OPTIONS, NO_DEADLINE, Client
from asap.errors import InvalidState
from asap.transports.ws.client import WebSocketChannel


URL = "ws://127.0.0.1:9/asap/v1/ws"  # never connected: options are built before any I/O


@pytest.mark.asyncio
async def test_options_are_shared_per_timeout_and_carry_the_client_metadata() -> None:
    """Plain calls share one CallOptions per timeout, with the token and the client's metadata."""
    client = Client(WebSocketChannel(URL), token="t0k", metadata=(("x-app", "a"),), timeout=5.0)
    first = client._cached_options(None, ())
    assert first is client._cached_options(None, ())
    assert first is not None
    assert first.timeout == 5.0
    assert first.metadata == (("authorization", "Bearer t0k"), ("x-app", "a"))
    streaming = client._cached_options(None, (), streaming=True)
    assert streaming is not None
    assert streaming.timeout is None
    assert streaming is client._cached_options(NO_DEADLINE, ())
    extra = client._cached_options(None, (("x-call", "b"),))
    assert extra is not None
    assert extra.metadata == (*first.metadata, ("x-call", "b"))
    assert extra is not client._cached_options(None, (("x-call", "b"),))  # not cached
    await client.close()
    with pytest.raises(InvalidState):
        client._cached_options(None, ())


@pytest.mark.asyncio
async def test_options_cache_is_bounded() -> None:
    """However many timeouts a client uses, it keeps at most _MAX_CACHED_OPTIONS of them."""
    client = Client(WebSocketChannel(URL))
    for index in range(5 * _MAX_CACHED_OPTIONS):
        options = client._cached_options(1.0 + index, ())
        assert options is not None
        assert options.timeout == 1.0 + index
        assert len(client._plain_options) <= _MAX_CACHED_OPTIONS
    await client.close()


@pytest.mark.asyncio
async def test_a_token_provider_is_asked_for_every_call() -> None:
    """With a token provider nothing is cached: each call's options carry the current token."""
    tokens = iter(["one", "two"])

    async def provider() -> str:
        return next(tokens)

    client = Client(WebSocketChannel(URL), token=provider)
    assert client._cached_options(None, ()) is None
    first = await client._options(None, ())
    second = await client._options(None, ())
    assert first.metadata == (("authorization", "Bearer one"),)
    assert second.metadata == (("authorization", "Bearer two"),)
    with pytest.raises(ValueError, match="metadata key"):
        await client._options(None, (("Bad", "x"),))
    await client.close()
