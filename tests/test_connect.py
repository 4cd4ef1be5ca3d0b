"""URL handling in asap.connect: schemes, the plaintext rule, endpoint ranking, the hosts
credentials may go to; shared dedupe stores."""

from __future__ import annotations

from collections import Counter

import pytest

from asap import Agent, Incoming, InsecureTransportError, Server, connect, task_envelope
from asap.connect import discover, open_channel, rank_endpoints, same_host_endpoints
from asap.core.dedupe import InMemoryDedupeStore
from asap.core.middleware import BearerAuth
from asap.v1 import manifest_pb2, payload_pb2, task_pb2


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


class _Recorder:
    """Which server ran each call, and under which identity (so: whose credentials it got)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def agent(self, name: str) -> Agent:
        agent = Agent("urn:asap:agent:scoped")

        @agent.skill("where")
        async def where(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
            identity = request.call.identity
            self.calls.append((name, "" if identity is None else identity.subject))
            return payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED)

        return agent


_SCOPED_TOKEN = "scoped-token"
_SCOPED_CALLER = "urn:asap:agent:scoped-caller"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("other_host", "options", "expected"),
    [
        ("127.0.0.2", {}, "named"),
        ("localhost", {}, "named"),
        ("127.0.0.2", {"allow_credentials_to": ["127.0.0.2"]}, "other"),
        ("localhost", {"allow_credentials_to": ["LOCALHOST."]}, "other"),
        ("127.0.0.2", {"allow_credentials_to": ["localhost"]}, "named"),
        ("127.0.0.2", {"trust_manifest_hosts": True}, "other"),
    ],
)
async def test_discover_sends_credentials_only_to_the_named_host(
    other_host: str, options: dict[str, object], expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest endpoint on another host (even another loopback name) is skipped unless allowed.

    The named server (127.0.0.1) advertises a gRPC endpoint on ``other_host`` first: a server that
    accepts the same token, so it would run the call under the caller's identity if the token
    reached it.
    """
    recorder = _Recorder()
    auth = BearerAuth.static({_SCOPED_TOKEN: _SCOPED_CALLER})
    named, other = (
        Server(recorder.agent("named"), auth=auth),
        Server(recorder.agent("other"), auth=auth),
    )
    named_ws = named.add_websocket("127.0.0.1:0")
    other_grpc = other.add_grpc(f"{other_host}:0")
    async with named, other:
        port = other_grpc.endpoint.url.rsplit(":", 1)[1]
        named.advertise(
            [
                manifest_pb2.Endpoint(
                    transport=manifest_pb2.TRANSPORT_GRPC, url=f"grpc://{other_host}:{port}"
                ),
                named_ws.endpoint,
            ]
        )
        client = await discover(
            named_ws.endpoint.url,
            sender=_SCOPED_CALLER,
            token=_SCOPED_TOKEN,
            prefer=("grpc", "ws"),
            **options,  # type: ignore[arg-type]
        )
        async with client:
            await client.send(task_envelope(named.agent.id, "where"))
    assert recorder.calls == [(expected, _SCOPED_CALLER)]
    skipped = [r.getMessage() for r in caplog.records if "skipping endpoint" in r.getMessage()]
    assert bool(skipped) == (expected == "named")
    assert all(repr(other_host) in line for line in skipped)


def test_same_host_endpoints_ignores_scheme_and_port_but_not_the_host() -> None:
    """Another transport or port on the named host is kept; another host, even loopback, is not."""
    endpoints = [
        "grpcs://Agent.Example:443",
        "wss://agent.example./asap/v1/ws",
        "grpc://agent.example:50051",
        "wss://evil.example/asap/v1/ws",
        "grpcs://agent.example.evil.example",
        "grpc://[::1]:50051",
    ]
    assert same_host_endpoints("grpcs://agent.example", endpoints) == endpoints[:3]
    assert same_host_endpoints("grpc://[::1]:1", endpoints) == ["grpc://[::1]:50051"]
