"""The subprocesses of ``scripts/bench.py``: echo servers and a holder of idle connections.

Run as ``python scripts/_bench_servers.py KIND [options]``; ``bench.py`` starts each one with its
own interpreter (``sys.executable``), so they use the project's virtualenv. Kinds:

- ``raw-grpc``: grpc.aio echo of bytes, no (de)serializers: ``/bench.Echo/Unary`` (unary),
  ``/bench.Echo/UnaryToEnd`` (unary, and one more receive that finds the end of the request
  stream: the least a unary handler that refuses a second request does) and ``/bench.Echo/Bidi``
  (streams both ways, one reply per message). The handlers are registered the same way ASAP
  registers its own (one generic handler).
- ``raw-ws``: websockets echo of every message (``compression=None``).
- ``asap-grpc`` / ``asap-ws``: :class:`asap.server.Server` serving the example agent
  (:mod:`asap.example`, skill ``echo``) on one listener, with rate limiting off and the
  concurrency caps raised so that only throughput is measured.
- ``asap-grpc-obs`` / ``asap-ws-obs``: the same with tracing and metrics on, as in production:
  the OpenTelemetry SDK (a TracerProvider with a BatchSpanProcessor whose exporter drops the
  spans; parent-based sampling, so the server records what the caller sampled) and
  :class:`~asap.observability.metrics.PrometheusMetrics`.
- ``asap-grpc-metrics`` / ``asap-ws-metrics``: metrics only (no tracing).
- ``idle-clients``: opens ``--count`` ASAP bridge connections to ``--url`` and keeps them idle.

Protocol with the parent, one line each way, on stdin/stdout:

- the process prints ``PORT <n>`` when it is serving (``READY <n>`` for ``idle-clients``);
- ``stats`` on stdin prints ``STATS <cpu seconds> <rss KiB>`` (``time.process_time()``, every
  thread of the process included, and VmRSS);
- ``quit`` or end of input stops the process (so it never outlives its parent).

Loopback only: every server binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit


if TYPE_CHECKING:
    from asap.observability.tracing import Tracing


HOST = "127.0.0.1"
RAW_SERVICE = "bench.Echo"
"""Service name of the raw gRPC echo (methods ``Unary``, ``UnaryToEnd`` and ``Bidi``)."""
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def pin(cpus: set[int]) -> None:
    """Pin every thread of this process (and threads created later) to ``cpus``."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    os.sched_setaffinity(0, cpus)
    task_dir = Path("/proc/self/task")
    if task_dir.is_dir():
        for entry in task_dir.iterdir():
            with contextlib.suppress(OSError, ValueError):
                os.sched_setaffinity(int(entry.name), cpus)


def rss_kib() -> int:
    """Resident set size of this process in KiB (peak RSS where /proc is missing)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def announce(text: str) -> None:
    """Write one line to the parent."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _control(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Answer ``stats`` on stdin; set ``stop`` on ``quit`` or end of input (a daemon thread)."""
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            announce(f"STATS {time.process_time():.6f} {rss_kib()}")
        elif command == "quit":
            break
    loop.call_soon_threadsafe(stop.set)


def _start_control() -> asyncio.Event:
    stop = asyncio.Event()
    thread = threading.Thread(target=_control, args=(asyncio.get_running_loop(), stop), daemon=True)
    thread.start()
    return stop


# -- raw gRPC ---------------------------------------------------------------------------------


async def serve_raw_grpc(_options: argparse.Namespace) -> None:
    """Serve the raw bytes echo over grpc.aio until told to stop."""
    import grpc

    async def unary(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    async def unary_to_end(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        # What a unary handler that refuses a second request must add (asap/transports/grpc/
        # server.py, _UnaryRequestCall): one more receive, which returns EOF after the request.
        following: object = await context.read()  # the stubs leave EOF out of its type
        if following is not grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a second request")
        return request

    async def bidi(
        requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "UnaryToEnd": grpc.unary_unary_rpc_method_handler(unary_to_end),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    # Generic handlers only, as ASAP's gRPC transport (asap/transports/grpc/server.py says why):
    # registered methods make grpc.aio's accept loop slower, and the baseline is its fastest setup.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(RAW_SERVICE, handlers),))
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    stop = _start_control()
    announce(f"PORT {port}")
    try:
        await stop.wait()
    finally:
        await server.stop(0)


# -- raw websockets ---------------------------------------------------------------------------


async def serve_raw_ws(_options: argparse.Namespace) -> None:
    """Serve the raw websockets echo until told to stop."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    async with serve(
        echo, HOST, 0, compression=None, max_size=MAX_MESSAGE_BYTES, max_queue=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        stop = _start_control()
        announce(f"PORT {port}")
        await stop.wait()


# -- ASAP -------------------------------------------------------------------------------------


async def serve_asap(options: argparse.Namespace) -> None:
    """Serve the example agent over one ASAP listener until told to stop."""
    from asap.example import agent
    from asap.protocol.limits import Limits
    from asap.server import Server

    limits = Limits(
        rate_limit_per_second=0,
        max_concurrent_calls=100_000,
        max_connections=options.max_connections,
        max_connections_per_peer=0,  # every bench connection (the idle ones too) is from 127.0.0.1
        heartbeat_interval=options.heartbeat,
        heartbeat_timeout=max(options.heartbeat, 5.0),
    )
    observed = "-obs" in options.kind
    if options.kind.endswith("-metrics"):
        from asap.observability.metrics import PrometheusMetrics

        server = Server(agent, limits=limits, metrics=PrometheusMetrics())
    elif observed:
        from asap.observability.metrics import PrometheusMetrics

        tracing = observed_tracing()
        server = Server(
            agent, limits=limits, interceptors=[tracing.server], metrics=PrometheusMetrics()
        )
    else:
        server = Server(agent, limits=limits)
    address = f"{HOST}:0"
    grpc = options.kind.startswith("asap-grpc")
    transport = server.add_grpc(address) if grpc else server.add_websocket(address)
    await server.start()
    stop = _start_control()
    announce(f"PORT {urlsplit(transport.endpoint.url).port}")
    try:
        await stop.wait()
    finally:
        await server.stop(0)


def observed_tracing(sampled: float = 1.0) -> Tracing:
    """Tracing through the real SDK: batched spans, exported to nowhere (no network here)."""
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from asap.observability.tracing import Tracing

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    # Head sampling: ``sampled`` of the traces started here; calls follow their caller's decision.
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampled)))
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return Tracing(tracer_provider=provider)


# -- idle connections -------------------------------------------------------------------------


async def hold_idle_clients(options: argparse.Namespace) -> None:
    """Open ``--count`` bridge connections (one call each, so they are open) and keep them idle."""
    from asap.client import Client
    from asap.connect import connect

    clients: list[Client] = []
    batch = 64
    try:
        for first in range(0, options.count, batch):
            opened = [
                connect(options.url, sender="urn:asap:agent:bench-idle")
                for _ in range(min(batch, options.count - first))
            ]
            clients.extend(opened)
            await asyncio.gather(*(client.get_manifest() for client in opened))
        stop = _start_control()
        announce(f"READY {len(clients)}")
        await stop.wait()
    finally:
        for first in range(0, len(clients), batch):
            await asyncio.gather(
                *(client.close() for client in clients[first : first + batch]),
                return_exceptions=True,
            )


KINDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "raw-grpc": serve_raw_grpc,
    "raw-ws": serve_raw_ws,
    "asap-grpc": serve_asap,
    "asap-ws": serve_asap,
    "asap-grpc-obs": serve_asap,
    "asap-ws-obs": serve_asap,
    "asap-grpc-metrics": serve_asap,
    "asap-ws-metrics": serve_asap,
    "idle-clients": hold_idle_clients,
}


def main() -> None:
    """Parse the arguments, pin, and run one kind until stdin says stop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to pin to")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--heartbeat", type=float, default=20.0, help="ASAP heartbeat interval")
    parser.add_argument("--max-connections", type=int, default=1000)
    parser.add_argument("--url", default="", help="idle-clients: the bridge URL")
    parser.add_argument("--count", type=int, default=0, help="idle-clients: how many")
    options = parser.parse_args()
    pin({int(cpu) for cpu in options.cpus.split(",") if cpu})
    logging.basicConfig(level=logging.ERROR)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if options.uvloop:
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        loop_factory = uvloop.new_event_loop
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        runner.run(KINDS[options.kind](options))


if __name__ == "__main__":
    main()
