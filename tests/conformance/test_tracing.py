"""OpenTelemetry spans: a two-hop call is one trace with the right parents on every transport."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id

from asap import errors
from asap.observability.tracing import Tracing
from tests.conformance._service import HarnessFactory, as_dict, envelope


pytestmark = pytest.mark.asyncio


def _tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(tracer_provider=provider), exporter


def _parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    span_id: int = span.context.span_id
    return span_id


def _trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    trace_id: int = span.context.trace_id
    return trace_id


async def test_two_hop_call_is_one_trace(make_harness: HarnessFactory) -> None:
    """Client → agent A → agent B yields client, server, client, server spans, each the parent of the next."""
    tracing, exporter = _tracing()
    second = await make_harness(interceptors=[tracing.server])
    first = await make_harness(interceptors=[tracing.server])
    first.probe.relay = second.connect(interceptors=[tracing.client])
    caller = first.connect(interceptors=[tracing.client])
    response = await caller.send(envelope("relay", {"text": "hop"}))
    assert as_dict(response.envelope.task_response.result) == {"text": "hop"}
    spans = sorted(exporter.get_finished_spans(), key=lambda span: span.start_time or 0)
    assert [(span.name, span.kind) for span in spans] == [
        ("asap.v1.AgentService/Send", SpanKind.CLIENT),
        ("asap.v1.AgentService/Send", SpanKind.SERVER),
        ("asap.v1.AgentService/Send", SpanKind.CLIENT),
        ("asap.v1.AgentService/Send", SpanKind.SERVER),
    ]
    outer_client, first_server, inner_client, second_server = spans
    assert len({_trace_id(span) for span in spans}) == 1
    assert _parent_id(outer_client) is None
    assert _parent_id(first_server) == _span_id(outer_client)
    assert _parent_id(inner_client) == _span_id(first_server)
    assert _parent_id(second_server) == _span_id(inner_client)
    assert first_server.parent is not None
    assert first_server.parent.is_remote
    trace_id = format_trace_id(_trace_id(outer_client))
    assert response.envelope.trace_id == trace_id
    for span in spans:
        attributes = dict(span.attributes or {})
        assert attributes["rpc.system"] == "asap"
        assert attributes["rpc.service"] == "asap.v1.AgentService"
        assert attributes["rpc.method"] == "Send"
        assert attributes["rpc.asap.status_code"] == 0
        assert span.status.status_code is StatusCode.UNSET
    carriers = {dict(span.attributes or {})["asap.transport"] for span in spans}
    assert len(carriers) == 1
    for server_span in (first_server, second_server):
        attributes = dict(server_span.attributes or {})
        assert attributes["network.peer.address"] == "127.0.0.1"
        assert "asap.envelope.trace_id" not in attributes  # the envelope carries this trace's id
    for client_span in (outer_client, inner_client):
        attributes = dict(client_span.attributes or {})
        assert attributes["server.address"] == "127.0.0.1"
        assert isinstance(attributes["server.port"], int)


async def test_failed_call_span_has_its_code(make_harness: HarnessFactory) -> None:
    """A NotFound is an error on the client span and not on the server span; both carry the code."""
    tracing, exporter = _tracing()
    harness = await make_harness(
        interceptors=[tracing.server], client_interceptors=[tracing.client]
    )
    with pytest.raises(errors.NotFound):
        await harness.client.send(envelope("raise", {"class": "NotFound"}))
    by_kind = {span.kind: span for span in exporter.get_finished_spans()}
    for span in by_kind.values():
        attributes = dict(span.attributes or {})
        assert attributes["rpc.asap.status_code"] == errors.Code.NOT_FOUND
        assert attributes["error.type"] == "NOT_FOUND"
    assert by_kind[SpanKind.CLIENT].status.status_code is StatusCode.ERROR
    assert by_kind[SpanKind.SERVER].status.status_code is StatusCode.UNSET


async def test_stream_spans_end_with_the_stream(make_harness: HarnessFactory) -> None:
    """A Subscribe's client span ends when the stream ends, in the server span's trace."""
    tracing, exporter = _tracing()
    harness = await make_harness(
        interceptors=[tracing.server], client_interceptors=[tracing.client]
    )
    async with await harness.client.subscribe(envelope("updates", {"count": 2})) as items:
        received = [item async for item in items]
    assert len(received) == 3
    assert {item.trace_id for item in received} == {received[0].trace_id}
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    assert _parent_id(spans[SpanKind.SERVER]) == _span_id(spans[SpanKind.CLIENT])
    assert received[0].trace_id == format_trace_id(_trace_id(spans[SpanKind.CLIENT]))
    assert dict(spans[SpanKind.CLIENT].attributes or {})["rpc.method"] == "Subscribe"


async def test_an_envelope_trace_id_of_its_own_is_kept_and_recorded(
    make_harness: HarnessFactory,
) -> None:
    """A caller's own Envelope.trace_id is kept, answered back and recorded on the server span."""
    tracing, exporter = _tracing()
    harness = await make_harness(
        interceptors=[tracing.server], client_interceptors=[tracing.client]
    )
    mine = envelope("echo")
    mine.trace_id = "work-item-42"
    response = await harness.client.send(mine)
    assert response.envelope.trace_id == "work-item-42"
    (server_span,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert dict(server_span.attributes or {})["asap.envelope.trace_id"] == "work-item-42"


async def test_unsampled_calls_propagate_without_recording(make_harness: HarnessFactory) -> None:
    """With a sampler that drops, no span is recorded and the call and its trace id still flow."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    harness = await make_harness(
        interceptors=[tracing.server], client_interceptors=[tracing.client]
    )
    response = await harness.client.send(envelope("echo"))
    assert len(response.envelope.trace_id) == 32
    assert exporter.get_finished_spans() == ()
