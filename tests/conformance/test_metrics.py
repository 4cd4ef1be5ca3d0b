"""Prometheus metrics count the same calls the same way on every transport, scraped over HTTP."""

from __future__ import annotations

import pytest

from asap import Limits, errors
from asap.observability.metrics import PrometheusMetrics
from tests.conformance._metrics import label_values, scrape, value
from tests.conformance._service import TESTER, HarnessFactory, envelope, stamped


pytestmark = pytest.mark.asyncio


async def test_calls_are_counted_by_method_and_code(make_harness: HarnessFactory) -> None:
    """Started, handled by code, latency, in-flight and stream messages, scraped and parsed."""
    metrics = PrometheusMetrics()
    harness = await make_harness(
        metrics=metrics, metrics_address="127.0.0.1:0", client_interceptors=[metrics.client]
    )
    client = harness.client
    await client.send(envelope("echo"))
    with pytest.raises(errors.NotFound):
        await client.send(envelope("raise", {"class": "NotFound"}))
    async with await client.subscribe(envelope("updates", {"count": 2})) as items:
        assert len([item async for item in items]) == 3
    await client.publish([envelope("echo"), envelope("echo")])
    port = harness.server.metrics_port
    samples, content_type = await scrape(f"http://127.0.0.1:{port}/metrics")
    assert content_type.startswith("text/plain; version=")
    assert value(samples, "asap_server_started_total", method="Send") == 2
    assert value(samples, "asap_server_handled_total", method="Send", code="OK") == 1
    assert value(samples, "asap_server_handled_total", method="Send", code="NOT_FOUND") == 1
    assert value(samples, "asap_server_handling_seconds_count", method="Send") == 2
    assert value(samples, "asap_server_in_flight", method="Send") == 0
    assert value(samples, "asap_server_msg_sent_total", method="Subscribe") == 3
    assert value(samples, "asap_server_msg_received_total", method="Subscribe") == 1
    assert value(samples, "asap_server_msg_received_total", method="Publish") == 2
    assert value(samples, "asap_server_msg_sent_total", method="Send") == 0
    assert value(samples, "asap_client_handled_total", method="Send", code="NOT_FOUND") == 1
    assert value(samples, "asap_client_handled_total", method="Subscribe", code="OK") == 1
    assert value(samples, "asap_client_handled_total", method="Publish", code="OK") == 1
    assert value(samples, "asap_client_msg_received_total", method="Subscribe") == 3
    assert value(samples, "asap_client_msg_sent_total", method="Publish") == 2
    carriers = label_values(samples, "asap_server_started_total", "transport")
    assert len(carriers) == 1
    assert carriers == label_values(samples, "asap_client_started_total", "transport")
    assert label_values(samples, "asap_server_handled_total", "method") <= {
        "Send",
        "SendBatch",
        "Subscribe",
        "Publish",
        "Stream",
        "GetManifest",
    }


async def test_refusals_and_dedupe_are_counted(make_harness: HarnessFactory) -> None:
    """Rate-limit refusals and dedupe hits are counted; no label names a caller."""
    metrics = PrometheusMetrics()
    harness = await make_harness(
        metrics=metrics,
        metrics_address="127.0.0.1:0",
        limits=Limits(rate_limit_per_second=0.1, rate_limit_burst=2),
    )
    repeated = stamped(envelope("echo"))
    await harness.client.send(repeated)
    await harness.client.send(repeated)
    with pytest.raises(errors.RateLimited):
        await harness.client.send(envelope("echo"))
    samples, _ = await scrape(f"http://127.0.0.1:{harness.server.metrics_port}/metrics")
    assert value(samples, "asap_dedupe_hits_total") == 1
    assert value(samples, "asap_rate_limited_total") == 1
    assert value(samples, "asap_server_handled_total", code="RESOURCE_EXHAUSTED") == 1
    labels = {label for (_, have) in samples for label, _ in have}
    assert labels <= {"method", "code", "le", "side", "transport"}
    assert not any(TESTER in text for (_, have) in samples for _, text in have)
