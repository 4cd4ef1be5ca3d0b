"""URL handling in asap.connect: schemes, the plaintext rule, endpoint ranking; shared dedupe stores."""

from __future__ import annotations

from collections import Counter

import pytest

from asap import Agent, Incoming, InsecureTransportError, Server, connect, task_envelope
from asap.connect import open_channel, rank_endpoints
from asap.core.dedupe import InMemoryDedupeStore
from asap.v1 import payload_pb2, task_pb2


@pytest.mark.parametrize("url", ["grpc://example.com:50051", "ws://example.com/asap/v1/ws"])
def test_plaintext_to_a_remote_host_is_refused(url: str) -> None:
    """grpc:// and ws:// to a non-loopback host raise before any connection is made."""
    with pytest.raises(InsecureTransportError):
        open_channel(url)


def test_unknown_scheme_is_refused() -> None:
    """Only grpc, grpcs, ws and wss URLs are accepted."""
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        open_channel("http://127.0.0.1:80")


def test_rank_endpoints_prefers_by_scheme_and_drops_refused_plaintext() -> None:
    """TLS endpoints rank first; plaintext to a remote host is dropped; unknown schemes are dropped."""
    urls = [
        "ws://example.com/asap/v1/ws",
        "grpc://127.0.0.1:50051",
        "wss://example.com/asap/v1/ws",
        "http://127.0.0.1:1",
        "ws://127.0.0.1:8765/asap/v1/ws",
    ]
    assert rank_endpoints(urls) == [
        "wss://example.com/asap/v1/ws",
        "grpc://127.0.0.1:50051",
        "ws://127.0.0.1:8765/asap/v1/ws",
    ]
    assert rank_endpoints(urls, ("ws", "grpc")) == [
        "ws://127.0.0.1:8765/asap/v1/ws",
        "grpc://127.0.0.1:50051",
    ]


@pytest.mark.asyncio
async def test_servers_given_one_empty_store_share_it() -> None:
    """An explicitly passed (still empty) dedupe store is used, so two servers dedupe together."""
    runs: Counter[str] = Counter()
    agent = Agent("urn:asap:agent:shared")

    @agent.skill("count")
    async def count(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        runs[request.envelope.id] += 1
        return payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED)

    store = InMemoryDedupeStore()
    first, second = Server(agent, dedupe=store), Server(agent, dedupe=store)
    first.add_grpc("127.0.0.1:0")
    second.add_websocket("127.0.0.1:0")
    envelope = task_envelope(agent.id, "count")
    async with first, second:
        for server in (first, second):
            async with connect(server.endpoints()[0].url, sender="urn:asap:agent:t") as client:
                await client.send(envelope)
    assert runs == Counter({envelope.id: 1})
