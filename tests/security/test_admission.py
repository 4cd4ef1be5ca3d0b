"""Item 3 (admission control): handshake authentication and its deadline, per-peer connection caps,
the idle timeout, strikes for refused credentials, bounded health Watch, anonymous rate-limit keys;
item 5: static tokens compared in constant time.

Cross-transport rules (the per-principal quota, failed authentication charged to the rate limit)
are in ``tests/conformance/test_quotas.py``.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from asap import Client, Limits, RetryPolicy, Server, connect
from asap.cli import _parser
from asap.core.context import Identity
from asap.core.health import HEALTH_CHECK
from asap.core.method import method
from asap.core.middleware import BearerAuth
from asap.errors import Unauthenticated, from_status
from asap.transports.ws.client import WebSocketChannel
from asap.transports.ws.server import WebSocketServerTransport
from asap.v1 import bridge_pb2, status_pb2
from tests.security.conftest import (
    CALLER_ID,
    TOKEN,
    RawWs,
    ServeFactory,
    echo_envelope,
    make_agent,
)


pytestmark = pytest.mark.asyncio

MANIFEST = method("GetManifest").path
WATCH = "/grpc.health.v1.Health/Watch"
WAIT = 5.0
"""Seconds a test waits for an answer or a close before it fails."""


def _call(stream_id: int, path: str, *, half_close: bool = True) -> bytes:
    start = bridge_pb2.CallStart(method=path, half_close=half_close)
    if half_close:
        start.message.binary = b""
    return bridge_pb2.Frame(stream_id=stream_id, start=start).SerializeToString()


async def _status(ws: ClientConnection, stream_id: int, path: str) -> status_pb2.Status:
    """Make one unary call on a raw bridge connection and return its status."""
    await ws.send(_call(stream_id, path))
    async with asyncio.timeout(WAIT):
        while True:
            data = await ws.recv()
            assert isinstance(data, bytes)
            frame = bridge_pb2.Frame.FromString(data)
            if frame.WhichOneof("kind") == "status" and frame.stream_id == stream_id:
                return frame.status.status


async def _closed(ws: ClientConnection) -> tuple[int, str]:
    """Wait for the server's close frame (reading and dropping frames until then)."""
    with pytest.raises(ConnectionClosed):  # noqa: PT012 - read until the close
        async with asyncio.timeout(WAIT):
            while True:
                await ws.recv()
    close = ws.protocol.close_rcvd
    assert close is not None
    return close.code, close.reason


def _listener(server: Server) -> WebSocketServerTransport:
    found = [each for each in server._transports if isinstance(each, WebSocketServerTransport)]
    return found[0]


# --- handshake authentication ---------------------------------------------------------------


async def test_handshake_without_valid_credentials_is_refused_with_401(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """With handshake auth, missing or wrong credentials get HTTP 401 and a Bearer challenge."""
    served = await serve(auth=True, websocket={"authenticate_handshake": True})
    with pytest.raises(InvalidStatus) as missing:
        await raw_ws(served.ws_url)
    assert missing.value.response.status_code == 401
    assert missing.value.response.headers["WWW-Authenticate"] == "Bearer"
    with pytest.raises(InvalidStatus) as wrong:
        await raw_ws(served.ws_url, additional_headers={"Authorization": "Bearer nope"})
    assert wrong.value.response.status_code == 401
    assert wrong.value.response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert _listener(served.server).connections == 0


async def test_the_bridge_client_sees_the_same_reasons_as_a_refused_call(
    serve: ServeFactory,
) -> None:
    """A refused handshake raises Unauthenticated with MISSING_CREDENTIALS or INVALID_TOKEN."""
    served = await serve(auth=True, websocket={"authenticate_handshake": True})
    for token, reason in ((None, "MISSING_CREDENTIALS"), ("nope", "INVALID_TOKEN")):
        channel = WebSocketChannel(served.ws_url, token=token)
        client = Client(channel, sender=CALLER_ID, retry=RetryPolicy(max_attempts=1))
        try:
            with pytest.raises(Unauthenticated) as caught:
                await client.send(echo_envelope())
            assert caught.value.reason == reason
        finally:
            await client.close()


async def test_handshake_with_a_valid_token_upgrades_and_its_calls_keep_the_identity(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """A verified handshake upgrades, and its calls run as the token's identity."""
    served = await serve(auth=True, websocket={"authenticate_handshake": True})
    ws = await raw_ws(served.ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    status = await _status(ws, 1, MANIFEST)
    assert status.code == 0
    query = await raw_ws(f"{served.ws_url}?access_token={TOKEN}")  # browsers: the query parameter
    assert (await _status(query, 1, MANIFEST)).code == 0


async def test_refused_handshakes_are_charged_to_the_rate_limit(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """Guessing tokens with handshakes costs tokens too: past the burst, HTTP 429 + Retry-After."""
    limits = Limits(rate_limit_per_second=0.01, rate_limit_burst=2)
    served = await serve(auth=True, limits=limits, websocket={"authenticate_handshake": True})
    statuses = []
    for guess in range(3):
        with pytest.raises(InvalidStatus) as caught:
            await raw_ws(served.ws_url, additional_headers={"Authorization": f"Bearer {guess}"})
        statuses.append(caught.value.response.status_code)
    assert statuses == [401, 401, 429]
    assert int(caught.value.response.headers["Retry-After"]) > 0
    ws = await raw_ws(served.ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    assert ws.subprotocol  # a valid token is not refused for the guesses made before it


async def test_handshake_auth_is_off_by_default_and_calls_are_checked(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """Without handshake auth the upgrade happens and each call is UNAUTHENTICATED instead."""
    served = await serve(auth=True)
    ws = await raw_ws(served.ws_url)
    status = await _status(ws, 1, MANIFEST)
    assert isinstance(from_status(status), Unauthenticated)


async def test_handshake_auth_needs_auth() -> None:
    """authenticate_handshake without auth= is a configuration error."""
    server = Server(make_agent())
    with pytest.raises(ValueError, match="auth"):
        server.add_websocket("127.0.0.1:0", authenticate_handshake=True)


async def test_a_handshake_that_never_completes_is_dropped_at_the_deadline(
    serve: ServeFactory,
) -> None:
    """A peer that connects and sends nothing is dropped at ``handshake_timeout``."""
    served = await serve(limits=Limits(rate_limit_per_second=0, handshake_timeout=0.2))
    host, port = served.ws_url.removeprefix("ws://").split("/")[0].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # EOF: the server dropped us
    finally:
        writer.close()


async def test_a_verifier_that_never_answers_is_cut_by_the_handshake_deadline(
    raw_ws: RawWs,
) -> None:
    """The deferred upgrade is bounded too: a stuck verifier cannot hold the connection."""
    started = asyncio.Event()

    async def stuck(token: str) -> Identity | None:
        started.set()
        await asyncio.Event().wait()
        return None

    server = Server(make_agent(), auth=stuck, limits=Limits(handshake_timeout=0.2))
    server.add_websocket("127.0.0.1:0", authenticate_handshake=True)
    async with server:
        url = server.endpoints()[0].url
        with pytest.raises(InvalidHandshake):  # no HTTP response: the connection was dropped
            await raw_ws(url, additional_headers={"Authorization": "Bearer x"}, open_timeout=5)
        assert started.is_set()
        assert _listener(server).connections == 0


# --- per-peer connection caps -----------------------------------------------------------------


async def test_connections_past_the_per_peer_cap_are_refused_with_1013(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """One address holds at most ``max_connections_per_peer``; the next gets 1013, like the cap."""
    served = await serve(limits=Limits(rate_limit_per_second=0, max_connections_per_peer=2))
    listener = _listener(served.server)
    first = await raw_ws(served.ws_url)
    await raw_ws(served.ws_url)
    refused = await raw_ws(served.ws_url)
    assert await _closed(refused) == (1013, "too many connections from this address")
    assert listener.connections_from("127.0.0.1") == 2
    await first.close()
    await first.wait_closed()
    again = await raw_ws(served.ws_url)
    assert (await _status(again, 1, MANIFEST)).code == 0


async def test_behind_a_trusted_proxy_the_cap_counts_the_forwarded_client(raw_ws: RawWs) -> None:
    """Through a trusted proxy each forwarded client has its own cap, not the proxy's address."""
    server = Server(
        make_agent(),
        limits=Limits(rate_limit_per_second=0, max_connections_per_peer=1),
        trusted_proxies=["127.0.0.0/8"],
    )
    server.add_websocket("127.0.0.1:0")
    async with server:
        url = server.endpoints()[0].url

        def via_proxy(client: str) -> dict[str, str]:
            return {"X-Forwarded-For": client}

        await raw_ws(url, additional_headers=via_proxy("198.51.100.1"))
        await raw_ws(url, additional_headers=via_proxy("198.51.100.2"))
        again = await raw_ws(url, additional_headers=via_proxy("198.51.100.1"))
        assert await _closed(again) == (1013, "too many connections from this address")
        assert _listener(server).connections_from("198.51.100.2") == 1


async def test_the_per_peer_map_forgets_peers_that_left(serve: ServeFactory, raw_ws: RawWs) -> None:
    """Peers with no connection left are not remembered (the map is bounded by open connections)."""
    served = await serve()
    listener = _listener(served.server)
    opened = [await raw_ws(served.ws_url) for _ in range(3)]
    assert listener.peers == 1
    for ws in opened:
        await ws.close()
    for conn in listener.open_connections():
        await conn.wait_closed()
    assert listener.peers == 0


async def test_rotating_source_addresses_get_no_fresh_rate_limit_buckets(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """Past ``rate_limit_max_anonymous`` new addresses share one bucket, and no one is reset."""
    limits = Limits(rate_limit_per_second=0.01, rate_limit_burst=1, rate_limit_max_anonymous=2)
    served = await serve(limits=limits)
    victim = await raw_ws(served.ws_url)
    assert (await _status(victim, 1, MANIFEST)).code == 0
    codes = []
    for index in range(2, 12):  # every 127.x address is loopback
        ws = await raw_ws(served.ws_url, local_addr=(f"127.0.0.{index}", 0))
        codes.append((await _status(ws, 1, MANIFEST)).code)
    # One address got a bucket of its own, one more spent the shared overflow bucket's burst.
    assert codes.count(0) == 2
    assert set(codes) == {0, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}
    assert (await _status(victim, 3, MANIFEST)).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


# --- idle timeout ---------------------------------------------------------------------------


async def test_a_connection_with_no_call_is_closed_after_the_idle_timeout(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """An idle bridge connection gets GoAway and then 1001; one with an open call is kept."""
    served = await serve(limits=Limits(rate_limit_per_second=0, connection_idle_timeout=0.3))
    busy = await raw_ws(served.ws_url)
    await busy.send(_call(1, method("Stream").path, half_close=False))  # stays open
    idle = await raw_ws(served.ws_url)
    async with asyncio.timeout(WAIT):
        goaway = bridge_pb2.Frame.FromString(await idle.recv())  # type: ignore[arg-type]
    assert goaway.WhichOneof("kind") == "goaway"
    assert await _closed(idle) == (1001, "idle timeout")
    listener = _listener(served.server)
    for conn in listener.open_connections():
        if conn.close_code is not None:  # the idle one, closing
            await conn.wait_closed()
    # busy's timer came due first (it opened first) and found its call open.
    assert listener.connections == 1
    assert (await _status(busy, 3, MANIFEST)).code == 0


async def test_a_client_reconnects_cleanly_after_an_idle_close(serve: ServeFactory) -> None:
    """The bridge client takes the idle close in its stride: its next call succeeds."""
    served = await serve(limits=Limits(rate_limit_per_second=0, connection_idle_timeout=0.2))
    client = connect(served.ws_url, sender=CALLER_ID)
    try:
        await client.send(echo_envelope())
        (conn,) = _listener(served.server).open_connections()
        async with asyncio.timeout(WAIT):
            await conn.wait_closed()
        assert conn.close_code == 1001
        await client.send(echo_envelope())
    finally:
        await client.close()


# --- strikes ---------------------------------------------------------------------------------


async def test_refused_credentials_are_strikes(serve: ServeFactory, raw_ws: RawWs) -> None:
    """Calls refused for their credentials count as strikes: guessing ends the connection (1008)."""
    served = await serve(
        auth=True, limits=Limits(rate_limit_per_second=0, rate_limit_strikes_before_close=3)
    )
    ws = await raw_ws(served.ws_url, additional_headers={"Authorization": "Bearer guess"})
    for stream_id in (1, 3):
        assert isinstance(from_status(await _status(ws, stream_id, MANIFEST)), Unauthenticated)
    await ws.send(_call(5, MANIFEST))
    assert (await _closed(ws))[0] == 1008


async def test_free_health_checks_do_not_reset_rate_limit_strikes(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """Rate-limited calls with a health Check after each still reach the strike limit (1008)."""
    limits = Limits(
        rate_limit_per_second=0.001, rate_limit_burst=1, rate_limit_strikes_before_close=3
    )
    served = await serve(limits=limits)
    ws = await raw_ws(served.ws_url)
    stream_id = 1
    with pytest.raises(ConnectionClosed):  # noqa: PT012 - the loop runs until the close
        for _ in range(10):
            for path in (MANIFEST, HEALTH_CHECK.path):
                await _status(ws, stream_id, path)
                stream_id += 2
    assert ws.protocol.close_rcvd is not None
    assert ws.protocol.close_rcvd.code == 1008


# --- health Watch -----------------------------------------------------------------------------


async def test_health_watch_streams_are_bounded(
    serve: ServeFactory, raw_grpc: Callable[[str], grpc.aio.Channel]
) -> None:
    """Past ``max_health_watchers`` a Watch is RESOURCE_EXHAUSTED (TOO_MANY_CALLS); a slot freed
    by a cancelled Watch is taken again."""
    served = await serve(limits=Limits(rate_limit_per_second=0, max_health_watchers=2))
    channel = raw_grpc(served.grpc_target)
    watch = channel.unary_stream(
        WATCH,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    request = health_pb2.HealthCheckRequest()
    held = [watch(request), watch(request)]
    for call in held:
        first = await call.read()
        assert isinstance(first, health_pb2.HealthCheckResponse)
    refused = watch(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await refused.read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = caught.value.trailing_metadata()
    assert details is not None
    assert served.server.health.watchers == 2
    held[0].cancel()
    again = watch(request)
    assert isinstance(await again.read(), health_pb2.HealthCheckResponse)
    again.cancel()
    held[1].cancel()


async def test_the_bridge_serves_no_health_watch(serve: ServeFactory, raw_ws: RawWs) -> None:
    """The bridge answers Check only; Watch is UNIMPLEMENTED there (nothing to bound)."""
    served = await serve()
    ws = await raw_ws(served.ws_url)
    status = await _status(ws, 1, WATCH)
    assert status.code == grpc.StatusCode.UNIMPLEMENTED.value[0]


# --- tokens --------------------------------------------------------------------------------------


async def test_static_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """BearerAuth.static checks an offered token with hmac.compare_digest against every known one."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = BearerAuth.static({"tok-a": "urn:a", "tok-b": "urn:b"})
    verify = auth._verifier
    assert (await verify("tok-a")) is not None
    assert (await verify("tok-x")) is None
    assert len(calls) == 4


async def test_cli_takes_the_admission_knobs() -> None:
    """``asap serve --max-connections-per-peer`` and ``--ws-authenticate-handshake`` parse."""
    knobs = ["--max-connections-per-peer", "7", "--ws-authenticate-handshake"]
    args = _parser().parse_args(["serve", "--ws", "127.0.0.1:0", *knobs])
    assert args.max_connections_per_peer == 7
    assert args.ws_authenticate_handshake
    assert not _parser().parse_args(["serve", "--ws", "127.0.0.1:0"]).ws_authenticate_handshake
