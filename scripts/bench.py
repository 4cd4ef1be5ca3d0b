"""Benchmark ASAP against raw grpc.aio and raw websockets on loopback (``make bench``).

Usage::

    python scripts/bench.py            # full: 3 rounds, medians (a few minutes)
    python scripts/bench.py --quick    # 1 round, fewer calls (under a minute)
    python scripts/bench.py --json out.json --only grpc --skip-idle

Every server runs in its own subprocess (``scripts/_bench_servers.py``, started with this
interpreter) bound to 127.0.0.1; with two or more CPUs the servers and this client are pinned to
disjoint CPU sets, which trade places every other slice (:class:`CpuSwap`). The payload is 1 KiB:
raw bytes for the raw echoes, a TaskRequest of the example agent's ``echo`` skill whose input
holds a 1 KiB string for ASAP. Scenarios:

- raw gRPC unary and bidi echo (bytes in, bytes out; no serializers);
- raw websockets echo (binary frames, no compression; pipelined on one connection);
- ASAP ``Send`` over gRPC, over the WebSocket bridge with proto frames, and with JSON frames;
- ASAP ``Stream`` over gRPC and over the bridge (one DuplexStream, envelopes pipelined);
- ASAP ``Send`` over gRPC and over the bridge with tracing and metrics on at both ends (the
  OpenTelemetry SDK with batched spans exported to nowhere, and Prometheus metrics), compared
  with the same scenario off: the cost of observability. Once with every call traced (the worst
  case) and once with 10 % of the traces sampled at the caller (head sampling, as high-rate RPC
  services run it; the server follows the caller's decision), and once with metrics alone.

For each: sequential latency (p50/p99 of N calls after a warm-up), throughput with 1, 16 and 64
calls in flight (a fixed number of calls, wall time), and CPU time per call in this client
(``time.process_time``) and in the server (its own ``process_time``, asked over its stdin).
Every scenario of a round has its connection open at once, and each phase is cut into slices
that the scenarios take in turn (:func:`measure`): ASAP and the raw baseline it is divided by are
measured moments apart, not minutes, so a change in the machine's speed moves both.
"Calls in flight" are concurrent calls on one connection for unary calls, and a window of
unanswered messages on one stream (or one raw WebSocket connection) for streams. Then the ratios
ASAP/raw with the project's targets, and the idle-connections measurement: K idle bridge
connections (heartbeats on) held by another subprocess; server RSS per connection and an active
caller's latency with and without them.

Flags: ``--quick`` (1 round, fewer calls, 200 idle connections), ``--uvloop`` (a second column
set on uvloop, only if it is importable; it is not a dependency), ``--json PATH``, ``--only KEY``
(scenarios whose key contains KEY), ``--skip-idle``, ``--rounds N``, ``--idle-connections K``,
``--compiled`` (build ASAP's hot modules with mypyc, ``scripts/compile.py``, and measure that
build; raw baselines as always in the same run), ``--stores`` (only ``scripts/bench_stores.py``:
the Redis store vs in memory, and
``asap serve --workers 2`` vs 1), ``--instructions`` (only ``scripts/bench_instructions.py``:
instructions per call under callgrind, a count that other load on the machine cannot move).

Each measurement also records how much CPU other processes used meanwhile (``/proc/stat``); on a
shared machine the report says when the numbers are noisy. Servers and the idle-connection holder
exit on ``quit`` or when their stdin closes, and are stopped and reaped on every exit path
(Ctrl-C, SIGTERM, errors), so no process outlives a run.

Nothing here asserts anything about time: it measures and reports. Results go to stdout as Markdown
tables and to ``--json`` (default ``bench-results/bench.json``, per round and medians).
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import google.protobuf
import grpc
from google.protobuf.internal import api_implementation
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from asap.client import Client, DuplexStream, task_envelope
from asap.connect import connect
from asap.example import agent
from asap.interceptors import ClientInterceptor
from asap.protocol.frames import DEFAULT_PATH, SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO
from asap.v1 import envelope_pb2
from scripts.compile import build as build_compiled
from scripts.compile import is_compiled
from scripts.compile import python_path as compiled_python_path


if TYPE_CHECKING:
    from asap.observability.tracing import Tracing


ROOT = Path(__file__).resolve().parent.parent
SERVERS_SCRIPT = Path(__file__).resolve().parent / "_bench_servers.py"
HOST = "127.0.0.1"
RAW_SERVICE = "bench.Echo"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
SENDER = "urn:asap:agent:bench"
PAYLOAD_BYTES = 1024
IN_FLIGHT = (1, 16, 64)
NOISY_PERCENT = 10.0
"""Other processes' CPU use (percent of one CPU) above which the report says the numbers are noisy."""
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
PAYLOAD_TEXT = "".join(_ALPHABET[(i * 7919) % len(_ALPHABET)] for i in range(PAYLOAD_BYTES))
"""The 1 KiB payload: ASCII, so the same bytes are a WebSocket binary frame and a JSON string."""
PAYLOAD = PAYLOAD_TEXT.encode()


@dataclass(frozen=True, slots=True)
class Settings:
    """How much to measure."""

    rounds: int
    warmup: int
    latency_calls: int
    throughput_calls: int
    idle_connections: int
    idle_heartbeat: float
    idle_latency_calls: int
    slices: int
    """Each phase's calls are split into this many slices, and the scenarios take turns slice by
    slice (see :func:`measure`)."""


QUICK = Settings(
    rounds=1,
    warmup=200,
    latency_calls=1000,
    throughput_calls=2000,
    slices=2,
    idle_connections=200,
    idle_heartbeat=1.0,
    idle_latency_calls=1000,
)
FULL = Settings(
    rounds=3,
    warmup=500,
    latency_calls=3000,
    throughput_calls=8000,
    slices=4,
    idle_connections=2000,
    idle_heartbeat=2.0,
    idle_latency_calls=3000,
)


# -- CPUs and subprocesses --------------------------------------------------------------------


def split_cpus() -> tuple[set[int], set[int]]:
    """Disjoint (server, client) CPU sets: halves of this process's CPUs; empty sets with one."""
    if not hasattr(os, "sched_getaffinity"):
        return set(), set()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(), set()
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def pin(cpus: set[int], pid: int | None = None) -> None:
    """Pin every thread of this process, or of process ``pid``, to ``cpus``.

    Threads the process creates later inherit the set of the thread that creates them.
    """
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    os.sched_setaffinity(0 if pid is None else pid, cpus)
    task_dir = Path(f"/proc/{'self' if pid is None else pid}/task")
    if task_dir.is_dir():
        for entry in task_dir.iterdir():
            with contextlib.suppress(OSError, ValueError):  # a thread that has just ended
                os.sched_setaffinity(int(entry.name), cpus)


class CpuSwap:
    """Which CPUs the servers run on and which this client runs on, swapped every other slice.

    A VM's virtual CPUs do not keep one speed: the host runs other guests on them, and for
    seconds at a time one of the two can be much slower than the other (timed here: the same
    loop took 0.21 to 0.50 s on either). A raw echo's client and server do about the same work
    and keep both CPUs busy, while an ASAP call is bound by its server (its client idles a
    quarter of the time): a slow client CPU holds back the raw baseline alone, a slow server CPU
    ASAP more. Swapping the sets every other slice gives every scenario as many slices on one
    placement as on the other. Called as ``place(index)`` by :func:`measure`.
    """

    def __init__(
        self, servers: Sequence[ServerProcess], server_cpus: set[int], client_cpus: set[int]
    ) -> None:
        self._servers = servers
        self._placements = ((server_cpus, client_cpus), (client_cpus, server_cpus))
        self._current = 0

    def __call__(self, index: int) -> None:
        """Place the processes for slice ``index``: even slices as given, odd ones swapped."""
        choice = index % 2
        server_cpus, client_cpus = self._placements[choice]
        if choice == self._current or not server_cpus or not client_cpus:
            return
        for server in self._servers:
            pin(server_cpus, server.pid)
        pin(client_cpus)
        self._current = choice


@dataclass(frozen=True, slots=True)
class Stats:
    """A subprocess's CPU time (seconds, all threads) and resident memory (KiB)."""

    cpu: float
    rss_kib: int


class ServerProcess:
    """One subprocess of ``_bench_servers.py``; :meth:`stop` ends it (idempotent).

    It announces ``PORT <n>`` (or ``READY <n>``) on stdout and answers ``stats`` on stdin; it also
    exits by itself when its stdin closes, so it cannot outlive this process. ``prefix`` runs it
    under another program (``scripts/bench_instructions.py``: valgrind), ``stderr`` takes its
    standard error.
    """

    def __init__(
        self,
        kind: str,
        args: Sequence[str] = (),
        *,
        cpus: set[int],
        uvloop: bool,
        ready: str = "PORT",
        timeout: float = 30.0,
        prefix: Sequence[str] = (),
        stderr: int | IO[bytes] | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        command = [*prefix, sys.executable, str(SERVERS_SCRIPT), kind, *args]
        if cpus:
            command += ["--cpus", ",".join(str(cpu) for cpu in sorted(cpus))]
        if uvloop:
            command.append("--uvloop")
        self.kind = kind
        self._stop_timeout = stop_timeout
        self._buffer = b""
        # A new session: Ctrl-C in the terminal reaches only this process, which then stops the
        # servers in order instead of racing them.
        self._proc = subprocess.Popen(  # noqa: S603 - our own script with our own interpreter
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
            start_new_session=True,
        )
        try:
            word, _, value = self._readline(timeout).partition(" ")
            if word != ready:
                message = f"{kind}: expected {ready}, got {word!r}"
                raise RuntimeError(message)
            self.value = int(value)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        """The subprocess's pid."""
        return self._proc.pid

    def _readline(self, timeout: float) -> str:
        assert self._proc.stdout is not None  # noqa: S101 - stdout=PIPE
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                message = f"{self.kind} did not answer within {timeout} s"
                raise TimeoutError(message)
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    message = f"{self.kind} exited with {self._proc.wait()}"
                    raise RuntimeError(message)
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()

    def stats(self) -> Stats:
        """The subprocess's CPU time and RSS now (a round trip over its stdin and stdout)."""
        assert self._proc.stdin is not None  # noqa: S101 - stdin=PIPE
        self._proc.stdin.write(b"stats\n")
        self._proc.stdin.flush()
        word, cpu, rss = self._readline(10.0).split()
        if word != "STATS":
            message = f"{self.kind}: expected STATS, got {word!r}"
            raise RuntimeError(message)
        return Stats(float(cpu), int(rss))

    def stop(self) -> None:
        """Ask the subprocess to quit, then terminate and finally kill it; always waits for it."""
        proc = self._proc
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None  # noqa: S101 - stdin=PIPE
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
            for end in (None, proc.terminate, proc.kill):
                if end is not None:
                    end()
                try:
                    proc.wait(self._stop_timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()


# -- drivers: one connection of one scenario --------------------------------------------------


class Driver(abc.ABC):
    """One open connection of a scenario: sequential calls and a fixed number of calls in flight."""

    @abc.abstractmethod
    async def call(self) -> None:
        """One round trip."""

    @abc.abstractmethod
    async def run(self, total: int, in_flight: int) -> None:
        """Make ``total`` round trips with ``in_flight`` of them outstanding at a time."""

    async def check(self) -> None:
        """One round trip whose answer is checked (the echo really echoes)."""
        await self.call()

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection."""


class UnaryDriver(Driver):
    """Calls in flight are concurrent tasks, each making calls until ``total`` have been made."""

    async def run(self, total: int, in_flight: int) -> None:
        """See :meth:`Driver.run`."""
        remaining = total

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self.call()

        async with asyncio.TaskGroup() as group:
            for _ in range(min(in_flight, total)):
                group.create_task(worker())


class WindowDriver(Driver):
    """Calls in flight are a window of sent, unanswered messages on one stream or connection."""

    @abc.abstractmethod
    async def send(self) -> None:
        """Send one message."""

    @abc.abstractmethod
    async def receive(self) -> None:
        """Receive one answer."""

    async def call(self) -> None:
        """See :meth:`Driver.call`."""
        await self.send()
        await self.receive()

    async def run(self, total: int, in_flight: int) -> None:
        """See :meth:`Driver.run`."""
        if in_flight <= 1:  # one at a time: no writer task, exactly like the latency phase
            for _ in range(total):
                await self.call()
            return
        window = asyncio.Semaphore(in_flight)

        async def writer() -> None:
            for _ in range(total):
                await window.acquire()
                await self.send()

        async with asyncio.TaskGroup() as group:
            group.create_task(writer())
            for _ in range(total):
                await self.receive()
                window.release()


def _check_echo(answer: bytes | str) -> None:
    data = answer.encode() if isinstance(answer, str) else answer
    if data != PAYLOAD:
        message = f"the echo answered {len(data)} bytes that differ from the payload"
        raise RuntimeError(message)


class RawGrpcUnary(UnaryDriver):
    """grpc.aio unary echo of bytes (``method``: ``Unary``, or ``UnaryToEnd``, which reads on)."""

    def __init__(self, port: int, method: str = "Unary") -> None:
        self._channel = grpc.aio.insecure_channel(f"{HOST}:{port}", options=_grpc_options())
        self._echo: Any = self._channel.unary_unary(f"/{RAW_SERVICE}/{method}")

    async def call(self) -> None:
        """See :meth:`Driver.call`."""
        await self._echo(PAYLOAD)

    async def check(self) -> None:
        """See :meth:`Driver.check`."""
        _check_echo(await self._echo(PAYLOAD))

    async def close(self) -> None:
        """See :meth:`Driver.close`."""
        await self._channel.close()


class RawGrpcBidi(WindowDriver):
    """grpc.aio bidi echo of bytes on one call."""

    def __init__(self, port: int) -> None:
        self._eof = grpc.aio.EOF
        self._channel = grpc.aio.insecure_channel(f"{HOST}:{port}", options=_grpc_options())
        self._call: Any = self._channel.stream_stream(f"/{RAW_SERVICE}/Bidi")()

    async def send(self) -> None:
        """See :meth:`WindowDriver.send`."""
        await self._call.write(PAYLOAD)

    async def receive(self) -> None:
        """See :meth:`WindowDriver.receive`."""
        if await self._call.read() is self._eof:
            message = "the bidi echo ended early"
            raise RuntimeError(message)

    async def check(self) -> None:
        """See :meth:`Driver.check`."""
        await self.send()
        _check_echo(await self._call.read())

    async def close(self) -> None:
        """See :meth:`Driver.close`."""
        await self._call.done_writing()
        for _ in range(4):  # the server ends the call once it saw the half-close
            if await self._call.read() is self._eof:
                break
        await self._channel.close()


def _grpc_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


class RawWebSocket(WindowDriver):
    """websockets echo of binary frames on one connection (pipelined when calls are in flight)."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    async def send(self) -> None:
        """See :meth:`WindowDriver.send`."""
        await self._connection.send(PAYLOAD)

    async def receive(self) -> None:
        """See :meth:`WindowDriver.receive`."""
        await self._connection.recv()

    async def check(self) -> None:
        """See :meth:`Driver.check`."""
        await self.send()
        _check_echo(await self._connection.recv())

    async def close(self) -> None:
        """See :meth:`Driver.close`."""
        await self._connection.close()


def _template() -> envelope_pb2.Envelope:
    return task_envelope(agent.id, "echo", {"data": PAYLOAD_TEXT})


def _check_answer(answer: envelope_pb2.Envelope) -> None:
    value = answer.task_response.result.fields.get("data")
    if value is None or value.string_value != PAYLOAD_TEXT:
        message = f"ASAP echo answered {answer.WhichOneof('payload')} without the payload"
        raise RuntimeError(message)


class AsapSend(UnaryDriver):
    """``Client.send`` of an echo TaskRequest (a fresh copy of one template, so a fresh id)."""

    def __init__(
        self, url: str, subprotocol: str, interceptors: Sequence[ClientInterceptor] = ()
    ) -> None:
        self._client = connect(
            url, sender=SENDER, subprotocol=subprotocol, interceptors=interceptors
        )
        self._template = _template()

    def _envelope(self) -> envelope_pb2.Envelope:
        envelope = envelope_pb2.Envelope()
        envelope.CopyFrom(self._template)
        return envelope

    async def call(self) -> None:
        """See :meth:`Driver.call`."""
        await self._client.send(self._envelope())

    async def check(self) -> None:
        """See :meth:`Driver.check`."""
        _check_answer((await self._client.send(self._envelope())).envelope)

    async def close(self) -> None:
        """See :meth:`Driver.close`."""
        await self._client.close()


class AsapStream(WindowDriver):
    """Echo TaskRequests on one ``Client.stream()``; each is answered by one StreamResponse."""

    def __init__(self, client: Client, stream: DuplexStream) -> None:
        self._client = client
        self._stream = stream
        self._template = _template()

    @classmethod
    async def open(cls, url: str, subprotocol: str) -> AsapStream:
        """Connect and open the duplex stream."""
        client = connect(url, sender=SENDER, subprotocol=subprotocol)
        return cls(client, await client.stream())

    async def send(self) -> None:
        """See :meth:`WindowDriver.send`."""
        envelope = envelope_pb2.Envelope()
        envelope.CopyFrom(self._template)
        await self._stream.send(envelope)

    async def _answer(self) -> envelope_pb2.Envelope:
        item = await anext(self._stream)
        if not item.HasField("envelope"):
            message = f"the stream answered an error: {item.error}"
            raise RuntimeError(message)
        return item.envelope

    async def receive(self) -> None:
        """See :meth:`WindowDriver.receive`."""
        await self._answer()

    async def check(self) -> None:
        """See :meth:`Driver.check`."""
        await self.send()
        _check_answer(await self._answer())

    async def close(self) -> None:
        """See :meth:`Driver.close`."""
        try:
            await self._stream.done_sending()
            async with asyncio.timeout(5.0):
                async for _ in self._stream:
                    pass
        finally:
            await self._stream.cancel()
            await self._client.close()


# -- scenarios --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    """One thing measured: which server it needs and how to open a connection to it."""

    key: str
    label: str
    server: str
    open: Callable[[int], Awaitable[Driver]]


async def _raw_grpc_unary(port: int) -> Driver:
    return RawGrpcUnary(port)


async def _raw_grpc_unary_to_end(port: int) -> Driver:
    return RawGrpcUnary(port, "UnaryToEnd")


async def _raw_grpc_bidi(port: int) -> Driver:
    return RawGrpcBidi(port)


async def _raw_ws(port: int) -> Driver:
    connection = await ws_connect(
        f"ws://{HOST}:{port}/", compression=None, max_size=MAX_MESSAGE_BYTES, max_queue=None
    )
    return RawWebSocket(connection)


def _bridge_url(port: int) -> str:
    return f"ws://{HOST}:{port}{DEFAULT_PATH}"


async def _asap_grpc_send(port: int) -> Driver:
    return AsapSend(f"grpc://{HOST}:{port}", SUBPROTOCOL_PROTO)


async def _asap_ws_proto_send(port: int) -> Driver:
    return AsapSend(_bridge_url(port), SUBPROTOCOL_PROTO)


async def _asap_ws_json_send(port: int) -> Driver:
    return AsapSend(_bridge_url(port), SUBPROTOCOL_JSON)


_OBSERVED: dict[float, list[ClientInterceptor]] = {}
SAMPLED = 0.1
"""The head-sampling ratio of the sampled observability scenarios."""


def observed_tracing(sampled: float = 1.0) -> Tracing:
    """Tracing through the real SDK, batched and exported to nowhere (as ``_bench_servers.py``)."""
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


def _observed(sampled: float) -> list[ClientInterceptor]:
    """The client's tracing and metrics interceptors (made once, like an application would)."""
    if sampled not in _OBSERVED:
        from asap.observability.metrics import PrometheusMetrics

        _OBSERVED[sampled] = [observed_tracing(sampled).client, PrometheusMetrics().client]
    return _OBSERVED[sampled]


async def _asap_grpc_send_observed(port: int) -> Driver:
    return AsapSend(f"grpc://{HOST}:{port}", SUBPROTOCOL_PROTO, _observed(1.0))


async def _asap_ws_proto_send_observed(port: int) -> Driver:
    return AsapSend(_bridge_url(port), SUBPROTOCOL_PROTO, _observed(1.0))


_METRICS_ONLY: list[ClientInterceptor] = []


def _metrics_only() -> list[ClientInterceptor]:
    if not _METRICS_ONLY:
        from asap.observability.metrics import PrometheusMetrics

        _METRICS_ONLY.append(PrometheusMetrics().client)
    return _METRICS_ONLY


async def _asap_grpc_send_metrics(port: int) -> Driver:
    return AsapSend(f"grpc://{HOST}:{port}", SUBPROTOCOL_PROTO, _metrics_only())


async def _asap_ws_proto_send_metrics(port: int) -> Driver:
    return AsapSend(_bridge_url(port), SUBPROTOCOL_PROTO, _metrics_only())


async def _asap_grpc_send_sampled(port: int) -> Driver:
    return AsapSend(f"grpc://{HOST}:{port}", SUBPROTOCOL_PROTO, _observed(SAMPLED))


async def _asap_ws_proto_send_sampled(port: int) -> Driver:
    return AsapSend(_bridge_url(port), SUBPROTOCOL_PROTO, _observed(SAMPLED))


async def _asap_grpc_stream(port: int) -> Driver:
    return await AsapStream.open(f"grpc://{HOST}:{port}", SUBPROTOCOL_PROTO)


async def _asap_ws_stream(port: int) -> Driver:
    return await AsapStream.open(_bridge_url(port), SUBPROTOCOL_PROTO)


SCENARIOS = (
    Scenario("raw-grpc-unary", "raw gRPC unary", "raw-grpc", _raw_grpc_unary),
    Scenario(
        "raw-grpc-unary-to-end",
        "raw gRPC unary, read to the end",
        "raw-grpc",
        _raw_grpc_unary_to_end,
    ),
    Scenario("raw-grpc-bidi", "raw gRPC bidi", "raw-grpc", _raw_grpc_bidi),
    Scenario("raw-ws", "raw websockets", "raw-ws", _raw_ws),
    Scenario("asap-grpc-send", "ASAP Send, gRPC", "asap-grpc", _asap_grpc_send),
    Scenario("asap-ws-proto-send", "ASAP Send, bridge proto", "asap-ws", _asap_ws_proto_send),
    Scenario("asap-ws-json-send", "ASAP Send, bridge JSON", "asap-ws", _asap_ws_json_send),
    Scenario("asap-grpc-stream", "ASAP Stream, gRPC", "asap-grpc", _asap_grpc_stream),
    Scenario("asap-ws-stream", "ASAP Stream, bridge proto", "asap-ws", _asap_ws_stream),
    Scenario(
        "asap-grpc-send-observed",
        "ASAP Send, gRPC, tracing+metrics",
        "asap-grpc-obs",
        _asap_grpc_send_observed,
    ),
    Scenario(
        "asap-ws-proto-send-observed",
        "ASAP Send, bridge proto, tracing+metrics",
        "asap-ws-obs",
        _asap_ws_proto_send_observed,
    ),
    Scenario(
        "asap-grpc-send-sampled",
        "ASAP Send, gRPC, tracing 10 % sampled+metrics",
        "asap-grpc-obs",
        _asap_grpc_send_sampled,
    ),
    Scenario(
        "asap-ws-proto-send-sampled",
        "ASAP Send, bridge proto, tracing 10 % sampled+metrics",
        "asap-ws-obs",
        _asap_ws_proto_send_sampled,
    ),
    Scenario(
        "asap-grpc-send-metrics",
        "ASAP Send, gRPC, metrics only",
        "asap-grpc-metrics",
        _asap_grpc_send_metrics,
    ),
    Scenario(
        "asap-ws-proto-send-metrics",
        "ASAP Send, bridge proto, metrics only",
        "asap-ws-metrics",
        _asap_ws_proto_send_metrics,
    ),
)


@dataclass(frozen=True, slots=True)
class Target:
    """A ratio ASAP/raw and what the project aims for."""

    label: str
    asap: str
    raw: str
    min_throughput: float
    max_p50: float | None
    at: int | None = None
    """The in-flight level the throughput target is set at (issue 12: 16); None: every level."""


TARGETS = (
    # Issue 12's targets for Send and the bridge Stream; issue 13's for observability.
    Target("gRPC Send / raw gRPC unary", "asap-grpc-send", "raw-grpc-unary", 0.8, 1.3, 16),
    # The ceiling of the row above: grpc.aio alone, with the one receive more that refusing a
    # second unary request takes (asap/transports/grpc/server.py, _UnaryRequestCall). Where it
    # misses 0.8, no handler that refuses a second request can meet the gRPC Send target.
    Target(
        "raw gRPC unary, read to the end / raw gRPC unary",
        "raw-grpc-unary-to-end",
        "raw-grpc-unary",
        0.8,
        1.3,
        16,
    ),
    Target("bridge Send proto / raw websockets", "asap-ws-proto-send", "raw-ws", 0.6, 1.5, 16),
    Target("bridge Send JSON / raw websockets", "asap-ws-json-send", "raw-ws", 0.2, None, 16),
    Target("gRPC Stream / raw gRPC bidi", "asap-grpc-stream", "raw-grpc-bidi", 0.8, None, 16),
    Target("bridge Stream proto / raw websockets", "asap-ws-stream", "raw-ws", 0.6, None, 16),
    Target(
        "gRPC Send tracing+metrics on / off",
        "asap-grpc-send-observed",
        "asap-grpc-send",
        0.85,
        None,
    ),
    Target(
        "bridge Send proto tracing+metrics on / off",
        "asap-ws-proto-send-observed",
        "asap-ws-proto-send",
        0.85,
        None,
    ),
    Target(
        "gRPC Send tracing 10 % sampled+metrics on / off",
        "asap-grpc-send-sampled",
        "asap-grpc-send",
        0.85,
        None,
    ),
    Target(
        "bridge Send proto tracing 10 % sampled+metrics on / off",
        "asap-ws-proto-send-sampled",
        "asap-ws-proto-send",
        0.85,
        None,
    ),
    Target("gRPC Send metrics on / off", "asap-grpc-send-metrics", "asap-grpc-send", 0.9, None),
    Target(
        "bridge Send proto metrics on / off",
        "asap-ws-proto-send-metrics",
        "asap-ws-proto-send",
        0.9,
        None,
    ),
)


def ws_available() -> bool:
    """Whether the WebSocket bridge transport is importable (it may still be under construction)."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("asap.transports.ws.client", "asap.transports.ws.server")
        )
    except ModuleNotFoundError:
        return False


# -- measuring --------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def busy_seconds() -> float:
    """CPU seconds every CPU of the machine has spent busy since boot (0 without /proc/stat)."""
    try:
        with Path("/proc/stat").open() as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal ...: user, nice, system and steal (time the
    # hypervisor gave to others). Interrupts are left out: loopback traffic is mostly softirq time
    # that no process is charged with, including this benchmark's own.
    busy = sum(fields[:3]) + fields[7]
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Meter:
    """Client and server CPU and wall time around one phase, and other processes' CPU meanwhile."""

    server: ServerProcess
    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    other_cpu: float = 0.0
    """CPU seconds the rest of the machine used meanwhile (a shared machine makes numbers noisy)."""
    _start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def __enter__(self) -> Meter:
        server_cpu = self.server.stats().cpu
        self._start = (time.perf_counter(), time.process_time(), server_cpu, busy_seconds())
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, client, server = time.perf_counter(), time.process_time(), self.server.stats().cpu
        busy = busy_seconds()
        self.wall = wall - self._start[0]
        self.client_cpu = client - self._start[1]
        self.server_cpu = server - self._start[2]
        if busy:
            used = busy - self._start[3] - self.client_cpu - self.server_cpu
            self.other_cpu = max(0.0, used)

    @property
    def other_percent(self) -> float:
        """Other processes' CPU use meanwhile, in percent of one CPU."""
        return self.other_cpu / self.wall * 100 if self.wall > 0 else 0.0


async def latency(
    driver: Driver, calls: int, *, min_seconds: float = 0.0, max_calls: int = 1_000_000
) -> list[float]:
    """Sequential round-trip times in microseconds, sorted.

    At least ``calls`` calls, and more until ``min_seconds`` have passed (at most ``max_calls``).
    """
    samples: list[float] = []
    clock = time.perf_counter_ns
    until = clock() + round(min_seconds * 1e9)
    while len(samples) < calls or (clock() < until and len(samples) < max_calls):
        start = clock()
        await driver.call()
        samples.append((clock() - start) / 1000)
    samples.sort()
    return samples


@dataclass(slots=True)
class Tally:
    """One scenario's phase, summed over its slices."""

    calls: int = 0
    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    other_percent: float = 0.0
    """The most other processes used during any of its slices, in percent of one CPU."""

    def add(self, meter: Meter, calls: int) -> None:
        """Count one slice."""
        self.calls += calls
        self.wall += meter.wall
        self.client_cpu += meter.client_cpu
        self.server_cpu += meter.server_cpu
        self.other_percent = max(self.other_percent, meter.other_percent)

    def cpu_per_call(self) -> dict[str, float]:
        """Client and server CPU per call, in microseconds."""
        return {
            "client_cpu_us": self.client_cpu / self.calls * 1e6,
            "server_cpu_us": self.server_cpu / self.calls * 1e6,
        }


def split(calls: int, slices: int) -> list[int]:
    """``calls`` in ``slices`` nearly equal parts (at least one call each)."""
    slices = max(1, min(slices, calls))
    part, extra = divmod(calls, slices)
    return [part + (1 if index < extra else 0) for index in range(slices)]


async def measure(
    drivers: dict[str, Driver],
    servers: dict[str, ServerProcess],
    settings: Settings,
    place: Callable[[int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Warm every driver up, then the latency phase and one throughput phase per in-flight level.

    Interleaved: each phase is cut into ``settings.slices`` slices, and the scenarios take turns
    slice by slice (in reverse order every other slice), so a scenario and the raw baseline it is
    compared with are measured within moments of each other, under the same conditions of a
    shared machine, instead of minutes apart. A scenario's numbers are summed over its slices.
    ``servers`` is keyed like ``drivers``; ``place(index)``, when given, puts the processes on
    their CPUs before slice ``index`` of every phase (:class:`CpuSwap`) and ``place(0)`` after.
    """
    keys = list(drivers)
    for key in keys:
        driver = drivers[key]
        await driver.check()
        for _ in range(settings.warmup):
            await driver.call()
        await driver.run(settings.warmup, max(IN_FLIGHT))

    def turns(index: int) -> list[str]:
        return keys if index % 2 == 0 else keys[::-1]

    def placed(index: int) -> int:
        if place is not None:
            place(index)
        return index

    samples: dict[str, list[float]] = {key: [] for key in keys}
    latency_tally = {key: Tally() for key in keys}
    for index, calls in enumerate(split(settings.latency_calls, settings.slices)):
        for key in turns(placed(index)):
            with Meter(servers[key]) as meter:
                samples[key].extend(await latency(drivers[key], calls))
            latency_tally[key].add(meter, calls)
    throughput: dict[str, dict[int, Tally]] = {key: {} for key in keys}
    for in_flight in IN_FLIGHT:
        for index, calls in enumerate(split(settings.throughput_calls, settings.slices)):
            for key in turns(placed(index)):
                with Meter(servers[key]) as meter:
                    await drivers[key].run(calls, in_flight)
                throughput[key].setdefault(in_flight, Tally()).add(meter, calls)
    placed(0)
    results: dict[str, dict[str, Any]] = {}
    for key in keys:
        ordered = sorted(samples[key])
        tallies = [latency_tally[key], *throughput[key].values()]
        results[key] = {
            "latency": {
                "p50_us": percentile(ordered, 0.50),
                "p99_us": percentile(ordered, 0.99),
                "mean_us": statistics.fmean(ordered),
                **latency_tally[key].cpu_per_call(),
            },
            "throughput": {
                str(in_flight): {"calls_per_s": tally.calls / tally.wall, **tally.cpu_per_call()}
                for in_flight, tally in throughput[key].items()
            },
            "background_cpu_percent": max(tally.other_percent for tally in tallies),
        }
    return results


def median_tree(rounds: Sequence[Any]) -> Any:  # noqa: ANN401 - JSON-shaped results
    """The element-wise median of equally shaped nested dicts of numbers."""
    first = rounds[0]
    if isinstance(first, dict):
        return {key: median_tree([each[key] for each in rounds]) for key in first}
    return statistics.median(rounds)


@dataclass(slots=True)
class Suite:
    """Every scenario's servers and results for one event loop."""

    loop: str
    settings: Settings
    scenarios: Sequence[Scenario]
    server_cpus: set[int]
    client_cpus: set[int]
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    idle: dict[str, Any] | None = None

    async def run(self, servers: dict[str, ServerProcess], *, idle: bool) -> None:
        """All rounds; each round opens a new connection per scenario and measures them all."""
        for number in range(1, self.settings.rounds + 1):
            started = time.perf_counter()
            drivers: dict[str, Driver] = {}
            try:
                for scenario in self.scenarios:
                    drivers[scenario.key] = await scenario.open(servers[scenario.server].value)
                by_key = {scenario.key: servers[scenario.server] for scenario in self.scenarios}
                place = CpuSwap(list(servers.values()), self.server_cpus, self.client_cpus)
                results = await measure(drivers, by_key, self.settings, place)
            finally:
                for driver in drivers.values():
                    await driver.close()
            print(
                f"  [{self.loop} round {number}/{self.settings.rounds}] "
                f"({time.perf_counter() - started:.1f} s)",
                flush=True,
            )
            for scenario in self.scenarios:
                result = results[scenario.key]
                self.rounds.setdefault(scenario.key, []).append(result)
                print(
                    f"    {scenario.label}: p50 {result['latency']['p50_us']:.0f} us, "
                    f"{result['throughput']['16']['calls_per_s']:.0f} calls/s at 16, "
                    f"{result['throughput']['64']['calls_per_s']:.0f} at 64, "
                    f"other processes {result['background_cpu_percent']:.0f} % CPU",
                    flush=True,
                )
        if idle:
            self.idle = await idle_connections(self)

    def medians(self) -> dict[str, Any]:
        """Per scenario, the median over rounds of every number."""
        return {key: median_tree(results) for key, results in self.rounds.items()}

    def best(self) -> dict[str, Any]:
        """Per scenario, the lowest p50 and the highest throughputs over rounds.

        The least disturbed round: on a shared machine other processes only ever slow a round down.
        """
        return {
            key: {
                "latency": {"p50_us": min(result["latency"]["p50_us"] for result in results)},
                "throughput": {
                    level: {
                        "calls_per_s": max(
                            result["throughput"][level]["calls_per_s"] for result in results
                        )
                    }
                    for level in results[0]["throughput"]
                },
            }
            for key, results in self.rounds.items()
        }


async def idle_connections(suite: Suite) -> dict[str, Any]:
    """Server RSS per idle bridge connection and an active caller's latency with and without them."""
    settings = suite.settings
    count = settings.idle_connections
    print(f"  [{suite.loop}] idle connections: {count}, heartbeat {settings.idle_heartbeat} s")
    with contextlib.ExitStack() as stack:
        server = ServerProcess(
            "asap-ws",
            [
                "--heartbeat",
                str(settings.idle_heartbeat),
                "--max-connections",
                str(count + 16),
            ],
            cpus=suite.server_cpus,
            uvloop=suite.loop == "uvloop",
        )
        stack.callback(server.stop)
        url = _bridge_url(server.value)
        driver = AsapSend(url, SUBPROTOCOL_PROTO)
        try:
            await driver.check()
            for _ in range(settings.warmup):
                await driver.call()
            # Long enough to span several heartbeats of every idle connection.
            window = 3 * settings.idle_heartbeat
            with Meter(server) as quiet:
                base = await latency(driver, settings.idle_latency_calls, min_seconds=window)
            # Measured after the calls above: their dedupe entries are not the connections' memory.
            before = server.stats()
            opened = time.perf_counter()
            holder = ServerProcess(
                "idle-clients",
                ["--url", url, "--count", str(count)],
                cpus=suite.client_cpus,
                uvloop=suite.loop == "uvloop",
                ready="READY",
                timeout=60.0 + count / 10,
            )
            stack.callback(holder.stop)
            open_seconds = time.perf_counter() - opened
            # Let every connection go through a couple of heartbeats before measuring.
            await asyncio.sleep(2 * settings.idle_heartbeat)
            settled = server.stats()
            idle_window = max(2.0, 2 * settings.idle_heartbeat)
            await asyncio.sleep(idle_window)
            idle_cpu = server.stats().cpu - settled.cpu
            with Meter(server) as busy:
                loaded = await latency(driver, settings.idle_latency_calls, min_seconds=window)
        finally:
            await driver.close()
    return {
        "connections": count,
        "heartbeat_s": settings.idle_heartbeat,
        "open_seconds": open_seconds,
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": settled.rss_kib,
        "rss_per_connection_kib": (settled.rss_kib - before.rss_kib) / count,
        "idle_server_cpu_percent": idle_cpu / idle_window * 100,
        "without": _idle_phase(base, quiet),
        "with": _idle_phase(loaded, busy),
    }


def _idle_phase(samples: Sequence[float], meter: Meter) -> dict[str, float]:
    return {
        "calls": len(samples),
        "p50_us": percentile(samples, 0.50),
        "p99_us": percentile(samples, 0.99),
        "p999_us": percentile(samples, 0.999),
        "max_us": samples[-1],
        "server_cpu_us": meter.server_cpu / len(samples) * 1e6,
        "other_cpu_percent": meter.other_percent,
    }


# -- reporting --------------------------------------------------------------------------------


def ratios(medians: dict[str, Any]) -> list[dict[str, Any]]:
    """ASAP/raw throughput ratios (per in-flight level) and p50 ratios, against the targets."""
    rows: list[dict[str, Any]] = []
    for target in TARGETS:
        if target.asap not in medians or target.raw not in medians:
            continue
        asap, raw = medians[target.asap], medians[target.raw]
        throughput = {
            level: asap["throughput"][level]["calls_per_s"]
            / raw["throughput"][level]["calls_per_s"]
            for level in raw["throughput"]
        }
        p50 = asap["latency"]["p50_us"] / raw["latency"]["p50_us"]
        judged = [ratio for level, ratio in throughput.items() if target.at in (None, int(level))]
        throughput_met = bool(judged) and min(judged) >= target.min_throughput
        p50_met = target.max_p50 is None or p50 <= target.max_p50
        rows.append(
            {
                "comparison": target.label,
                "asap": target.asap,
                "raw": target.raw,
                "throughput_ratio": throughput,
                "p50_ratio": p50,
                "min_throughput_ratio": target.min_throughput,
                "target_at": target.at,
                "max_p50_ratio": target.max_p50,
                "throughput_met": throughput_met,
                "p50_met": p50_met,
                "met": throughput_met and p50_met,
            }
        )
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio_table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "(no ASAP/raw pair among the scenarios run)"
    return _table(
        [
            "comparison",
            *(f"thr x{level}" for level in IN_FLIGHT),
            "target thr",
            "p50 x",
            "target p50",
            "met",
        ],
        [
            [
                row["comparison"],
                *(f"{row['throughput_ratio'][str(level)]:.2f}" for level in IN_FLIGHT),
                f">= {row['min_throughput_ratio']}"
                + ("" if row["target_at"] is None else f" @{row['target_at']}"),
                f"{row['p50_ratio']:.2f}",
                "-" if row["max_p50_ratio"] is None else f"<= {row['max_p50_ratio']}",
                "yes" if row["met"] else "NO",
            ]
            for row in rows
        ],
    )


def markdown(suite: Suite) -> str:
    """The suite's results as Markdown tables."""
    medians = suite.medians()
    labels = {scenario.key: scenario.label for scenario in suite.scenarios}
    parts = [
        f"### Event loop: {suite.loop} ({suite.settings.rounds} round(s), medians; "
        f"{PAYLOAD_BYTES} B payload)",
        "",
        f"Sequential latency ({suite.settings.latency_calls} calls) and CPU per call:",
        "",
        _table(
            ["scenario", "p50 µs", "p99 µs", "client CPU µs/call", "server CPU µs/call"],
            [
                [
                    labels[key],
                    f"{result['latency']['p50_us']:.0f}",
                    f"{result['latency']['p99_us']:.0f}",
                    f"{result['latency']['client_cpu_us']:.0f}",
                    f"{result['latency']['server_cpu_us']:.0f}",
                ]
                for key, result in medians.items()
            ],
        ),
        "",
        f"Throughput ({suite.settings.throughput_calls} calls per level), calls/s, and CPU per call "
        "with 64 in flight:",
        "",
        _table(
            [
                "scenario",
                *(f"{level} in flight" for level in IN_FLIGHT),
                "client CPU µs/call @64",
                "server CPU µs/call @64",
            ],
            [
                [
                    labels[key],
                    *(
                        f"{result['throughput'][str(level)]['calls_per_s']:.0f}"
                        for level in IN_FLIGHT
                    ),
                    f"{result['throughput']['64']['client_cpu_us']:.0f}",
                    f"{result['throughput']['64']['server_cpu_us']:.0f}",
                ]
                for key, result in medians.items()
            ],
        ),
        "",
        "Ratios ASAP/raw (throughput: higher is better; p50: lower is better):",
        "",
        _ratio_table(ratios(medians)),
    ]
    if suite.settings.rounds > 1:
        parts += [
            "",
            "The same ratios from each scenario's best round (lowest p50, highest throughput):",
            "",
            _ratio_table(ratios(suite.best())),
        ]
    background = [
        result["background_cpu_percent"] for results in suite.rounds.values() for result in results
    ]
    if background:
        parts += [
            "",
            f"Other processes on this machine used up to {max(background):.0f} % of one CPU "
            f"during a measurement (median {statistics.median(background):.0f} %)"
            + (
                "; the numbers are noisy, rerun on a quiet machine."
                if max(background) > NOISY_PERCENT
                else "."
            ),
        ]
    if suite.idle is not None:
        idle = suite.idle
        parts += [
            "",
            f"Idle bridge connections: {idle['connections']} (heartbeat every "
            f"{idle['heartbeat_s']} s, opened in {idle['open_seconds']:.1f} s): server RSS "
            f"{idle['rss_before_kib'] / 1024:.1f} → {idle['rss_after_kib'] / 1024:.1f} MiB, "
            f"{idle['rss_per_connection_kib']:.1f} KiB per connection; idle server CPU "
            f"{idle['idle_server_cpu_percent']:.1f} %.",
            "",
            _table(
                [
                    "active caller (bridge proto Send)",
                    "calls",
                    "p50 µs",
                    "p99 µs",
                    "p99.9 µs",
                    "max µs",
                    "server CPU µs/call",
                    "other processes % CPU",
                ],
                [
                    [
                        name,
                        f"{idle[key]['calls']}",
                        f"{idle[key]['p50_us']:.0f}",
                        f"{idle[key]['p99_us']:.0f}",
                        f"{idle[key]['p999_us']:.0f}",
                        f"{idle[key]['max_us']:.0f}",
                        f"{idle[key]['server_cpu_us']:.0f}",
                        f"{idle[key]['other_cpu_percent']:.0f}",
                    ]
                    for name, key in (
                        ("no idle connections", "without"),
                        (f"{idle['connections']} idle connections", "with"),
                    )
                ],
            ),
        ]
    return "\n".join(parts)


def environment(server_cpus: set[int], client_cpus: set[int]) -> dict[str, Any]:
    """What the numbers were measured on."""
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607 - read-only, informative
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "server_cpus": sorted(server_cpus),
        "client_cpus": sorted(client_cpus),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "protobuf_implementation": api_implementation.Type(),
        "websockets": importlib.metadata.version("websockets"),
        "asap_build": build_kind(),
    }


# -- main -------------------------------------------------------------------------------------


_COMPILED_RUN = "ASAP_BENCH_COMPILED"


def _run_compiled(argv: list[str]) -> int:
    """Build the mypyc tree, then run this script again with it first on the path (servers too)."""
    build_compiled()
    environ = {**os.environ, "PYTHONPATH": compiled_python_path(), _COMPILED_RUN: "1"}
    command = [sys.executable, __file__, *argv]
    return subprocess.run(command, env=environ, check=False).returncode  # noqa: S603 - this script


def build_kind() -> str:
    """``mypyc`` when the hot modules imported here are the compiled ones, else ``interpreted``."""
    compiled = is_compiled()
    if os.environ.get(_COMPILED_RUN) == "1" and not compiled:
        message = "--compiled, but asap was imported from its sources"
        raise RuntimeError(message)
    return "mypyc" if compiled else "interpreted"


def _loops(requested: bool) -> list[str]:
    if not requested:
        return ["asyncio"]
    if importlib.util.find_spec("uvloop") is None:
        print("uvloop is not importable: --uvloop ignored (it is not a dependency of ASAP)")
        return ["asyncio"]
    return ["asyncio", "uvloop"]


@contextlib.contextmanager
def servers_for(suite: Suite) -> Iterator[dict[str, ServerProcess]]:
    """Start the servers the suite's scenarios need; stop and reap them on the way out."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, ServerProcess] = {}
        for kind in dict.fromkeys(scenario.server for scenario in suite.scenarios):
            server = ServerProcess(kind, cpus=suite.server_cpus, uvloop=suite.loop == "uvloop")
            stack.callback(server.stop)
            servers[kind] = server
        yield servers


def run_suite(suite: Suite, *, idle: bool) -> None:
    """Run one suite on its event loop."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if suite.loop == "uvloop":
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        loop_factory = uvloop.new_event_loop
    with servers_for(suite) as servers, asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(suite.run(servers, idle=idle))


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run every suite, print the tables and write the JSON file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer calls (< 1 minute)")
    parser.add_argument("--uvloop", action="store_true", help="also run on uvloop if importable")
    parser.add_argument("--json", type=Path, default=Path("bench-results/bench.json"))
    parser.add_argument("--only", default="", help="only scenarios whose key contains this")
    parser.add_argument("--skip-idle", action="store_true", help="skip idle connections")
    parser.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    parser.add_argument("--idle-connections", type=int, default=0, help="override K")
    parser.add_argument(
        "--stores",
        action="store_true",
        help="only Send throughput with the Redis store vs in memory, and --workers 2 vs 1",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="build ASAP's hot modules with mypyc (scripts/compile.py) and measure that build",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="only instructions per call under callgrind, server and client (needs valgrind)",
    )
    options = parser.parse_args(argv)
    if options.compiled and os.environ.get(_COMPILED_RUN) != "1":
        return _run_compiled(sys.argv[1:] if argv is None else list(argv))
    for flag, script in (("stores", "bench_stores.py"), ("instructions", "bench_instructions.py")):
        if getattr(options, flag):
            path = Path(__file__).with_name(script)
            return subprocess.run([sys.executable, str(path)], check=False).returncode  # noqa: S603
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started ignoring it
    logging.basicConfig(level=logging.ERROR)  # plaintext-to-loopback warnings are expected here

    settings = QUICK if options.quick else FULL
    overrides: dict[str, Any] = {}
    if options.rounds > 0:
        overrides["rounds"] = options.rounds
    if options.idle_connections > 0:
        overrides["idle_connections"] = options.idle_connections
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    server_cpus, client_cpus = split_cpus()
    pin(client_cpus)
    bridge = ws_available()
    scenarios = [
        scenario
        for scenario in SCENARIOS
        if options.only in scenario.key and (bridge or not scenario.server.startswith("asap-ws"))
    ]
    if not bridge:
        print("asap.transports.ws is not importable yet: bridge scenarios skipped")
    idle = bridge and not options.skip_idle and (not options.only or "ws" in options.only)
    print(
        f"bench: {'quick' if options.quick else 'full'}, {settings.rounds} round(s), "
        f"ASAP {build_kind()}, "
        f"server CPUs {sorted(server_cpus) or 'any'}, client CPUs {sorted(client_cpus) or 'any'}"
        f"{' (swapped every other slice)' if server_cpus and client_cpus else ''}",
        flush=True,
    )
    started = time.perf_counter()
    suites = [
        Suite(loop, settings, scenarios, server_cpus, client_cpus)
        for loop in _loops(options.uvloop)
    ]
    for suite in suites:
        run_suite(suite, idle=idle)
    report = {
        "environment": environment(server_cpus, client_cpus),
        "settings": {"mode": "quick" if options.quick else "full", **dataclasses.asdict(settings)},
        "payload_bytes": PAYLOAD_BYTES,
        "in_flight": list(IN_FLIGHT),
        "suites": {
            suite.loop: {
                "rounds": suite.rounds,
                "medians": suite.medians(),
                "ratios": ratios(suite.medians()),
                "best_round_ratios": ratios(suite.best()),
                "idle_connections": suite.idle,
            }
            for suite in suites
        },
        "seconds": time.perf_counter() - started,
    }
    print()
    for suite in suites:
        print(markdown(suite))
        print()
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {options.json} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every server was stopped", file=sys.stderr)
        sys.exit(130)
