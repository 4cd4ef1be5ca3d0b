"""Metrics only the bridge has: GET /metrics on its listener, connections, closes, flow-control stalls."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from asap import Limits, RetryPolicy, Server, connect, errors
from asap.core import probes
from asap.observability.metrics import PrometheusMetrics
from asap.protocol.frames import DEFAULT_PATH
from tests.conformance._metrics import scrape, value
from tests.conformance._service import Probe, envelope, make_agent


pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Server, PrometheusMetrics, str, str]]:
    """A server with metrics on a gRPC and a bridge listener; yields it, its metrics and both URLs."""
    metrics = PrometheusMetrics()
    server = Server(make_agent(Probe()), metrics=metrics)
    server.add_grpc("127.0.0.1:0")
    server.add_websocket("127.0.0.1:0")
    await server.start()
    grpc_url, ws_url = (endpoint.url for endpoint in server.endpoints())
    try:
        yield server, metrics, grpc_url, ws_url
    finally:
        await server.stop(0)


def _http_base(ws_url: str) -> str:
    return "http" + ws_url.removeprefix("ws").removesuffix(DEFAULT_PATH)


async def test_metrics_on_the_bridge_listener_count_calls_of_both_listeners(
    served: tuple[Server, PrometheusMetrics, str, str],
) -> None:
    """GET /metrics beside /healthz answers the exposition, counting calls of every listener."""
    _, _, grpc_url, ws_url = served
    for url in (grpc_url, ws_url):
        async with connect(url, sender="urn:asap:agent:tester") as client:
            await client.send(envelope("echo"))
    samples, content_type = await scrape(_http_base(ws_url) + "/metrics")
    assert content_type.startswith("text/plain; version=")
    assert value(samples, "asap_server_handled_total", method="Send", transport="grpc") == 1
    assert value(samples, "asap_server_handled_total", method="Send", transport="ws") == 1
    # The bridge connection of the second client was counted and, once closed, is gone again.
    assert value(samples, "asap_bridge_connections") == 0
    assert value(samples, "asap_bridge_connection_closes_total", code="1000") == 1


async def test_a_server_without_metrics_has_no_metrics_path() -> None:
    """Without metrics= the bridge answers /metrics like any other unknown path (404)."""
    server = Server(make_agent(Probe()))
    server.add_websocket("127.0.0.1:0")
    await server.start()
    try:
        url = _http_base(server.endpoints()[0].url) + "/metrics"
        with pytest.raises(urllib.error.HTTPError) as caught:
            await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)
        assert caught.value.code == 404
        caught.value.close()
    finally:
        await server.stop(0)


class _StallEvent:
    """A probe listener that sets an event on the first flow-control stall of a given side."""

    def __init__(self, side: str) -> None:
        self.side = side
        self.stalled = asyncio.Event()

    def connection_opened(self, transport: str) -> None:
        """Not needed."""

    def connection_closed(self, transport: str, code: int | None, *, was_open: bool) -> None:
        """Not needed."""

    def flow_stalled(self, transport: str, side: str) -> None:
        """Record a stall on our side."""
        if side == self.side:
            self.stalled.set()

    def dedupe_hit(self) -> None:
        """Not needed."""

    def dedupe_evicted(self, count: int) -> None:
        """Not needed."""

    def rate_limited(self) -> None:
        """Not needed."""


async def test_a_write_waiting_for_credit_is_a_stall(
    served: tuple[Server, PrometheusMetrics, str, str],
) -> None:
    """A subscriber that stops reading makes the server's writes wait for credit: counted as stalls."""
    _, _, _, ws_url = served
    listener = _StallEvent("server")
    probes.PROBES.add(listener)
    try:
        async with connect(ws_url, sender="urn:asap:agent:tester") as client:
            flood = envelope("flood", {"count": 2000, "size": 1000})
            async with await client.subscribe(flood, timeout=60) as updates:
                await anext(updates)
                async with asyncio.timeout(10):
                    await listener.stalled.wait()
                rest = [item async for item in updates]
            assert len(rest) == 2000
    finally:
        probes.PROBES.remove(listener)
    samples, _ = await scrape(_http_base(ws_url) + "/metrics")
    assert value(samples, "asap_flow_control_stalls_total", transport="ws", side="server") >= 1


async def test_connection_limit_closes_are_counted_by_code() -> None:
    """A connection refused for the connection limit counts as a 1013 close, never as open."""
    metrics = PrometheusMetrics()
    server = Server(make_agent(Probe()), metrics=metrics, limits=Limits(max_connections=1))
    server.add_websocket("127.0.0.1:0")
    await server.start()
    try:
        url = server.endpoints()[0].url
        async with connect(url, sender="urn:asap:agent:tester") as first:
            await first.get_manifest()
            once = RetryPolicy(max_attempts=1)
            async with connect(url, sender="urn:asap:agent:tester", retry=once) as second:
                with pytest.raises(errors.Unavailable):
                    await second.get_manifest(timeout=5)
            samples, _ = await scrape(_http_base(url) + "/metrics")
            assert value(samples, "asap_bridge_connections") == 1
            assert value(samples, "asap_bridge_connection_closes_total", code="1013") >= 1
    finally:
        await server.stop(0)


async def test_a_client_send_waiting_for_credit_is_a_stall(
    served: tuple[Server, PrometheusMetrics, str, str],
) -> None:
    """A Stream whose server stops reading makes the client's sends wait for credit: a client stall."""
    _, _, _, ws_url = served
    listener = _StallEvent("client")
    probes.PROBES.add(listener)
    padding = "x" * 10_000
    try:
        async with connect(ws_url, sender="urn:asap:agent:tester") as client:
            stream = await client.stream()

            async def send_forever() -> None:
                while True:
                    await stream.send(envelope("park", {"key": "stall", "pad": padding}))

            async with asyncio.TaskGroup() as group:
                sender = group.create_task(send_forever())
                async with asyncio.timeout(20):
                    await listener.stalled.wait()
                sender.cancel()
            await stream.cancel()
    finally:
        probes.PROBES.remove(listener)
    # Probes are process-wide: this process's metrics count its clients' stalls too (side=client).
    samples, _ = await scrape(_http_base(ws_url) + "/metrics")
    assert value(samples, "asap_flow_control_stalls_total", transport="ws", side="client") >= 1
