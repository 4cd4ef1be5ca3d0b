"""Tracing, metrics and the access log of a two-agent call.

Run: ``.venv/bin/python examples/observability.py`` (needs ``asap-protocol[observability]`` and,
for this example only, ``opentelemetry-sdk``; the dev install has both).

A front agent served over gRPC answers ``ask`` by asking a back agent, served over the WebSocket
bridge, to ``lookup`` the topic. Both servers and every client carry the same tracing and metrics
interceptors. The script prints the call's trace as a tree (one trace: client → front server →
front's client → back server), the envelopes' ``trace_id``, a few access-log lines, and an excerpt
of the front server's metrics scraped from its metrics port and of the back server's scraped from
``GET /metrics`` on its bridge listener.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import urllib.request

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_trace_id

from asap import Agent, Incoming, Server, connect, task_envelope
from asap.core.access_log import ACCESS_LOGGER
from asap.observability.metrics import PrometheusMetrics
from asap.observability.tracing import Tracing
from asap.v1 import payload_pb2, task_pb2


exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracing = Tracing(tracer_provider=provider)
"""One tracing setup for the whole process (an application would export to a collector)."""

back = Agent("urn:asap:agent:back", description="Looks things up.")


@back.skill("lookup")
async def lookup(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
    """Answer with a fact about the topic."""
    topic = request.payload.input.fields["topic"].string_value
    answer = payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED)
    answer.result.update({"topic": topic, "fact": f"{topic} has been observed"})
    return answer


def make_front(back_url: str, metrics: PrometheusMetrics) -> Agent:
    """The front agent, which asks the back agent at ``back_url``."""
    front = Agent("urn:asap:agent:front", description="Answers questions by asking around.")
    interceptors = [tracing.client, metrics.client]

    @front.skill("ask")
    async def ask(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        """Ask the back agent; the call continues this call's trace."""
        async with connect(back_url, sender=front.id, interceptors=interceptors) as client:
            hop = task_envelope(back.id, "lookup", dict(request.payload.input))
            response = await client.send(hop)
            print(f"front → back envelope trace_id {response.envelope.trace_id}")
            return response.envelope.task_response

    return front


def print_tree(spans: list[ReadableSpan]) -> None:
    """Print spans as an indented tree, parents first."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = None if span.parent is None else span.parent.span_id
        children.setdefault(parent, []).append(span)

    def show(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda each: each.start_time or 0):
            attributes = dict(span.attributes or {})
            duration = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
            print(
                f"  {'  ' * depth}{span.kind.name:<6} {span.name} "
                f"[{attributes.get('asap.transport')}] "
                f"code {attributes.get('rpc.asap.status_code')} {duration:.1f} ms"
            )
            if span.context is not None:
                show(span.context.span_id, depth + 1)

    show(None, 0)


def excerpt(url: str, *names: str) -> list[str]:
    """The lines of the metrics at ``url`` that start with one of ``names``."""
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(names)]


async def main() -> None:
    """Serve both agents, make one call, print what observability saw."""
    # ERROR for everything else (the plaintext-to-loopback warnings); INFO for the access log.
    logging.basicConfig(level=logging.ERROR, format="%(name)s %(message)s", stream=sys.stdout)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO)
    back_metrics, front_metrics = PrometheusMetrics(), PrometheusMetrics()
    back_server = Server(back, interceptors=[tracing.server], metrics=back_metrics, access_log=True)
    back_server.add_websocket("127.0.0.1:0")
    async with back_server:
        back_url = back_server.endpoints()[0].url
        front_server = Server(
            make_front(back_url, front_metrics),
            interceptors=[tracing.server],
            metrics=front_metrics,
            metrics_address="127.0.0.1:0",
            access_log=True,
        )
        front_server.add_grpc("127.0.0.1:0")
        async with front_server:
            front_url = front_server.endpoints()[0].url
            async with connect(
                front_url,
                sender="urn:asap:agent:user",
                interceptors=[tracing.client, front_metrics.client],
            ) as client:
                question = task_envelope("urn:asap:agent:front", "ask", {"topic": "tracing"})
                response = await client.send(question)
            result = dict(response.envelope.task_response.result)
            print(f"answer: {result['fact']}")
            print(f"answer envelope trace_id {response.envelope.trace_id}")
            spans = list(exporter.get_finished_spans())
            trace_ids = {format_trace_id(span.context.trace_id) for span in spans if span.context}
            print(f"trace: {len(spans)} spans in {len(trace_ids)} trace {', '.join(trace_ids)}")
            print_tree(spans)
            front_metrics_url = f"http://127.0.0.1:{front_server.metrics_port}/metrics"
            back_metrics_url = back_url.replace("ws://", "http://").replace("/asap/v1/ws", "")
            names = ("asap_server_handled_total", "asap_client_handled_total")
            print(f"metrics excerpt (front, {front_metrics_url}):")
            # urllib blocks: in a thread, so this event loop can serve the bridge's /metrics.
            for line in await asyncio.to_thread(excerpt, front_metrics_url, *names):
                print(f"  {line}")
            print(f"metrics excerpt (back, {back_metrics_url}/metrics):")
            back_names = (*names, "asap_bridge_connections")
            for line in await asyncio.to_thread(
                excerpt, f"{back_metrics_url}/metrics", *back_names
            ):
                print(f"  {line}")


if __name__ == "__main__":
    asyncio.run(main())
