"""The built-in observers (metrics, tracing, access log) keep a plain bridge call eager.

A unary call whose handler is a plain function runs to its end inside the read that brought it,
with no task (asap.core.tasks.start_eagerly). An interceptor not marked ``eager_safe`` hands the
call to a task first: one more task and loop turn per call, which made metrics cost a third of
the bridge's Send throughput. The observers need no task, so they are marked, and what they
record (the span and its parent context, the counters) is still right.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asap import Agent, Incoming, Server, connect, task_envelope
from asap.observability.metrics import PrometheusMetrics
from asap.observability.tracing import Tracing
from asap.protocol.limits import Limits
from asap.v1 import payload_pb2, task_pb2


if TYPE_CHECKING:
    from collections.abc import AsyncIterator

AGENT = "urn:asap:agent:observed"
SENDER = "urn:asap:agent:observer"


class Seen:
    """What the handler saw: whether it ran in a task, and the span current in it."""

    def __init__(self) -> None:
        self.in_task: list[bool] = []
        self.trace_ids: list[int] = []


def make_agent(seen: Seen) -> Agent:
    agent = Agent(AGENT, name="observed")

    @agent.skill("plain")
    def plain(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        seen.in_task.append(asyncio.current_task() is not None)
        seen.trace_ids.append(trace.get_current_span().get_span_context().trace_id)
        return payload_pb2.TaskResponse(task_id="p", status=task_pb2.TASK_STATUS_COMPLETED)

    return agent


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def metrics() -> PrometheusMetrics:
    return PrometheusMetrics()


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest_asyncio.fixture
async def server(
    seen: Seen, exporter: InMemorySpanExporter, metrics: PrometheusMetrics
) -> AsyncIterator[Server]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    server = Server(
        make_agent(seen),
        limits=Limits(rate_limit_per_second=0),
        interceptors=[tracing.server],
        metrics=metrics,
        access_log=True,
    )
    server.add_websocket("127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(0)


@pytest.mark.asyncio
async def test_a_plain_call_runs_eagerly_through_metrics_tracing_and_the_access_log(
    server: Server,
    seen: Seen,
    exporter: InMemorySpanExporter,
    metrics: PrometheusMetrics,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asap")
    client = connect(server.endpoints()[0].url, sender=SENDER)
    try:
        for _ in range(3):
            await client.send(task_envelope(AGENT, "plain", {}), timeout=5.0)
    finally:
        await client.close()
    assert seen.in_task == [False, False, False]
    spans = [span for span in exporter.get_finished_spans() if span.kind is trace.SpanKind.SERVER]
    assert len(spans) == 3
    # The handler saw its own call's span as the current one, and the context was restored.
    assert seen.trace_ids == [span.context.trace_id for span in spans]
    assert trace.get_current_span() is trace.INVALID_SPAN
    exposition = metrics.exposition()[0].decode()
    assert 'asap_server_handled_total{code="OK",method="Send",transport="ws"} 3.0' in exposition
    assert sum('"method": "Send"' in record.getMessage() for record in caplog.records) == 3
