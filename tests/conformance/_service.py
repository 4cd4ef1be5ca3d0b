"""The conformance agent and its probe: one set of real handlers served on every transport.

The conformance suite runs every test against a real :class:`~asap.server.Server` serving
:func:`make_agent` on each transport; test bodies use only the public API (through the ``harness``
fixtures in ``tests/conftest.py``), so a test that passes on one transport and fails on another is a
semantic difference between the transports.

Skills (all take their arguments in ``TaskRequest.input``):

``echo``
    Returns the input as the result. Copies request metadata ``x-echo`` into trailing metadata
    ``x-echo-trailer`` (text) and ``x-echo-trailer-bin`` (bytes).
``inspect``
    Returns what the handler saw of its call: metadata, identity, deadline.
``updates``
    Yields ``count`` TaskUpdates (progress 1..count), then a TaskResponse.
``raise``
    Raises the AsapError subclass named by ``class`` (with ``reason``), carrying extra details and
    ErrorInfo metadata (:func:`build_error`); sets trailing metadata first, like ``echo``.
``crash``
    Raises ``ValueError`` with a secret in its message.
``park``
    Waits until the test releases ``key`` (:meth:`Probe.release`); records entry and cancellation.
``count``
    Counts its invocations per envelope id; optionally waits for ``gate`` to be released first.
``blob``
    Returns a result with a string of ``size`` characters; counts its invocations (``runs["blob"]``,
    event ``blob:<n>`` once the n-th has started).
``relay``
    Sends ``echo`` with its own input to the agent :attr:`Probe.relay` is connected to (a second
    harness) and returns that agent's TaskResponse: a two-hop call.
``spin``
    Yields ``count`` TaskUpdates (each with a message of ``pad`` characters) without ever awaiting,
    then a TaskResponse; records the steps reached (``runs["spin:<key>"]``) and, in its ``finally``,
    whether it was closed in the task that ran it (:attr:`Probe.closed_in_call_task`), then sets
    ``closed:<key>``.

Non-task payloads: McpToolCall is answered by an ``agent.on`` handler with an McpToolResult.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from asap import (
    Agent,
    AsapError,
    BearerAuth,
    Client,
    Incoming,
    Limits,
    Server,
    task_envelope,
    validation,
)
from asap import errors as asap_errors
from asap._typing import Metadata
from asap.errors import NotFound
from asap.interceptors import ClientInterceptor, Interceptor
from asap.server import MetricsExporter
from asap.v1 import envelope_pb2, payload_pb2, task_pb2


AGENT_ID = "urn:asap:agent:conformance"
"""The conformance agent's URN."""
TESTER = "urn:asap:agent:tester"
"""The sender every harness client uses unless a test says otherwise."""
GOOD_TOKEN = "good-token"
"""A token the ``auth_harness`` server accepts, for :data:`TESTER`."""
OTHER_SUBJECT = "urn:asap:agent:other"
"""Another identity the ``auth_harness`` server knows."""
OTHER_TOKEN = "other-token"
"""A token the ``auth_harness`` server accepts, for :data:`OTHER_SUBJECT`."""
SECRET = "secret: db-password=hunter2"
"""Text of the unexpected exception the ``crash`` skill raises; it must never reach a caller."""
WAIT_SECONDS = 10.0
"""Upper bound on waiting for a probe event (a bound on a hang, never a delay)."""

SKILLS = (
    "echo",
    "inspect",
    "updates",
    "flood",
    "raise",
    "opaque-detail",
    "crash",
    "park",
    "count",
    "blob",
    "spin",
    "relay",
)
"""The skills the conformance agent registers, in registration order."""

UNKNOWN_DETAIL_URL = "type.googleapis.com/acme.v9.QuotaDetail"
"""The type URL of the detail the ``opaque-detail`` skill raises; no schema here defines it."""

ERROR_METADATA_KEY = "origin"
"""An ErrorInfo metadata key the ``raise`` skill always sets."""
RATE_LIMIT_RETRY_AFTER = 2.5
"""The retry_after a RateLimited raised by the ``raise`` skill carries."""

ERROR_CLASSES_BY_NAME: Mapping[str, type[AsapError]] = {
    cls.__name__: cls for cls in asap_errors.ERROR_CLASSES
}
"""Every AsapError class, by class name."""


def error_cases() -> list[tuple[str, str]]:
    """Every (class name, reason) pair a handler can raise: each class with each of its reasons."""
    return [
        (cls.__name__, reason)
        for cls in asap_errors.ERROR_CLASSES
        for reason in sorted({cls.default_reason, *cls.reasons})
    ]


def received_class(raised: type[AsapError]) -> type[AsapError]:
    """The class a caller receives for an error a handler raised.

    Every class travels as itself, except the abstract base: ``AsapError`` has code UNKNOWN and
    reason UNKNOWN, which is :class:`~asap.errors.Unknown` on the wire.
    """
    return asap_errors.Unknown if raised is AsapError else raised


def error_details(name: str) -> list[Message]:
    """The extra details the ``raise`` skill attaches (beyond the ErrorInfo ASAP adds)."""
    violation = error_details_pb2.BadRequest.FieldViolation(
        field="input.class", description=f"asked to raise {name}", reason="ASKED"
    )
    return [
        error_details_pb2.BadRequest(field_violations=[violation]),
        error_details_pb2.ResourceInfo(
            resource_type="conformance.skill",
            resource_name="raise",
            owner=AGENT_ID,
            description=f"raised {name} on purpose",
        ),
    ]


def error_metadata(name: str, reason: str) -> dict[str, str]:
    """The ErrorInfo metadata the ``raise`` skill attaches."""
    return {ERROR_METADATA_KEY: "conformance", "class": name, "asked-reason": reason}


def error_message(name: str) -> str:
    """The message the ``raise`` skill uses."""
    return f"conformance agent raised {name} (ünïcode ✓)"


def build_error(name: str, reason: str) -> AsapError:
    """The error the ``raise`` skill raises for ``name`` and ``reason``."""
    cls = ERROR_CLASSES_BY_NAME[name]
    message = error_message(name)
    details = error_details(name)
    metadata = error_metadata(name, reason)
    if cls is asap_errors.RateLimited:
        return asap_errors.RateLimited(
            message,
            retry_after=RATE_LIMIT_RETRY_AFTER,
            reason=reason,
            details=details,
            metadata=metadata,
        )
    return cls(message, reason=reason, details=details, metadata=metadata)


def text_input(request: Incoming[payload_pb2.TaskRequest], key: str, default: str = "") -> str:
    """A string argument of the task's input."""
    value = request.payload.input.fields.get(key)
    return value.string_value if value is not None else default


def number_input(request: Incoming[payload_pb2.TaskRequest], key: str, default: int = 0) -> int:
    """An integer argument of the task's input."""
    value = request.payload.input.fields.get(key)
    return int(value.number_value) if value is not None else default


def as_dict(struct: struct_pb2.Struct) -> dict[str, object]:
    """A Struct as a plain dict."""
    return json_format.MessageToDict(struct)


def completed(task_id: str, result: Mapping[str, object] | None = None) -> payload_pb2.TaskResponse:
    """A COMPLETED TaskResponse with ``result``."""
    response = payload_pb2.TaskResponse(task_id=task_id, status=task_pb2.TASK_STATUS_COMPLETED)
    if result:
        json_format.ParseDict(dict(result), response.result)
    return response


@dataclass
class Probe:
    """What the handlers report to the test that drives them; every wait is on an event.

    Events are named ``"<what>:<key>"`` and created on first use, so a test may wait for an event
    before the handler sets it.
    """

    runs: Counter[str] = field(default_factory=Counter)
    """Invocations of the ``count``, ``park``, ``raise`` and ``blob`` skills, by key; the steps
    ``spin`` reached."""
    closed_in_call_task: dict[str, bool] = field(default_factory=dict)
    """For each ``spin`` key: whether its generator's ``finally`` ran in the task that started it."""
    relay: Client | None = None
    """The client the ``relay`` skill calls through (set by the test)."""
    _events: dict[str, asyncio.Event] = field(default_factory=dict)

    def event(self, name: str) -> asyncio.Event:
        """The event called ``name`` (created unset on first use)."""
        event = self._events.get(name)
        if event is None:
            event = self._events[name] = asyncio.Event()
        return event

    async def wait(self, name: str) -> None:
        """Wait until the event ``name`` is set (fails after :data:`WAIT_SECONDS` of waiting)."""
        async with asyncio.timeout(WAIT_SECONDS):
            await self.event(name).wait()

    async def entered(self, key: str) -> None:
        """Wait until a ``park`` (or gated ``count``) handler for ``key`` is running."""
        await self.wait(f"entered:{key}")

    async def cancelled(self, key: str) -> None:
        """Wait until the handler for ``key`` has seen CancelledError."""
        await self.wait(f"cancelled:{key}")

    async def finished(self, key: str) -> None:
        """Wait until the handler for ``key`` was released and returned (not cancelled)."""
        await self.wait(f"finished:{key}")

    def was_cancelled(self, key: str) -> bool:
        """Whether the handler for ``key`` has seen CancelledError."""
        return self.event(f"cancelled:{key}").is_set()

    def release(self, key: str) -> None:
        """Let the handler waiting on ``key`` return."""
        self.event(f"release:{key}").set()


async def _parked(probe: Probe, key: str) -> None:
    """Mark ``key`` entered, wait for its release, and record a cancellation."""
    probe.event(f"entered:{key}").set()
    try:
        await probe.event(f"release:{key}").wait()
    except asyncio.CancelledError:
        probe.event(f"cancelled:{key}").set()
        raise
    probe.event(f"finished:{key}").set()


def _echo_trailers(request: Incoming[payload_pb2.TaskRequest]) -> None:
    value = request.call.metadata_value("x-echo")
    if isinstance(value, str):
        request.call.set_trailing_metadata(
            ("x-echo-trailer", value), ("x-echo-trailer-bin", echo_trailer_bytes(value))
        )


def echo_trailer_bytes(value: str) -> bytes:
    """The binary trailer ``echo`` sends for request metadata ``x-echo: value``."""
    return b"\x00\xff" + value.encode() + b"\x80"


def make_agent(probe: Probe) -> Agent:
    """The conformance agent; its handlers report to ``probe``."""
    agent = Agent(AGENT_ID, name="conformance", description="Every behaviour, on every transport.")

    @agent.skill("echo", description="Returns its input; echoes x-echo as trailers.")
    async def echo(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        _echo_trailers(request)
        return payload_pb2.TaskResponse(
            task_id="t-echo", status=task_pb2.TASK_STATUS_COMPLETED, result=request.payload.input
        )

    @agent.skill("inspect", description="Returns what the handler saw of its call.")
    async def inspect(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        call = request.call
        text: dict[str, object] = {}
        binary: dict[str, object] = {}
        for key, value in call.metadata:
            if key.startswith("x-"):
                if isinstance(value, bytes):
                    binary[key] = value.hex()
                else:
                    text[key] = value
        remaining = call.time_remaining()
        return completed(
            "t-inspect",
            {
                "identity": call.identity.subject if call.identity is not None else "",
                "text": text,
                "binary": binary,
                "remaining": -1.0 if remaining is None else remaining,
                "sender": request.envelope.sender,
                "user_agent": str(call.metadata_value("user-agent") or ""),
                "authorization": str(call.metadata_value("authorization") or ""),
                "keys": sorted({key for key, _ in call.metadata}),
            },
        )

    @agent.skill("updates", description="Streams count TaskUpdates, then a TaskResponse.")
    async def updates(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
        count = number_input(request, "count", 3)
        for step in range(1, count + 1):
            yield payload_pb2.TaskUpdate(
                task_id="t-updates",
                update_type=task_pb2.UPDATE_TYPE_PROGRESS,
                status=task_pb2.TASK_STATUS_WORKING,
                progress_percent=float(step),
                message=f"step {step}",
            )
        yield completed("t-updates", {"steps": count})

    @agent.skill("flood", description="Streams input.count updates as fast as it may write them.")
    async def flood(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
        count = number_input(request, "count", 10)
        padding = "p" * number_input(request, "size", 0)
        for step in range(count):
            probe.runs["flood:produced"] += 1
            yield payload_pb2.TaskUpdate(task_id="t-flood", progress_percent=step, message=padding)
        probe.event("done:flood").set()
        yield completed("t-flood", {"count": count})

    @agent.skill("raise", description="Raises the AsapError subclass named in input.class.")
    async def raise_(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        name = text_input(request, "class")
        probe.runs[f"raise:{text_input(request, 'key', name)}"] += 1
        _echo_trailers(request)
        raise build_error(
            name, text_input(request, "reason", ERROR_CLASSES_BY_NAME[name].default_reason)
        )

    @agent.skill("opaque-detail", description="Raises NotFound with a detail of an unknown type.")
    async def opaque_detail(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        unknown = any_pb2.Any(type_url=UNKNOWN_DETAIL_URL, value=b"\x08\x07")
        message = "no such task"
        raise NotFound(message, metadata={"task_id": "t-9"}, details=[unknown])

    @agent.skill("crash", description="Raises an unexpected exception.")
    async def crash(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        _echo_trailers(request)
        raise ValueError(SECRET)

    @agent.skill("park", description="Waits until the test releases input.key.")
    async def park(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        key = text_input(request, "key")
        probe.runs[f"park:{key}"] += 1
        await _parked(probe, key)
        return completed("t-park", {"key": key})

    @agent.skill("count", description="Counts its invocations per envelope id.")
    async def count(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        key = request.envelope.id
        probe.runs[f"count:{key}"] += 1
        runs = probe.runs[f"count:{key}"]
        gate = text_input(request, "gate")
        if gate:
            await _parked(probe, gate)
        return completed("t-count", {"runs": runs})

    @agent.skill("blob", description="Returns input.size characters.")
    async def blob(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        probe.runs["blob"] += 1
        probe.event(f"blob:{probe.runs['blob']}").set()
        return completed("t-blob", {"blob": "x" * number_input(request, "size")})

    @agent.skill("spin", description="Streams input.count updates without ever awaiting.")
    async def spin(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
        key = text_input(request, "key")
        count = number_input(request, "count", 1)
        pad = "x" * number_input(request, "pad")
        started_in = asyncio.current_task()
        try:
            for step in range(1, count + 1):
                probe.runs[f"spin:{key}"] = step
                yield payload_pb2.TaskUpdate(
                    task_id="t-spin", status=task_pb2.TASK_STATUS_WORKING, message=pad
                )
            yield completed("t-spin", {"steps": count})
        finally:
            probe.closed_in_call_task[key] = asyncio.current_task() is started_in
            probe.event(f"closed:{key}").set()

    @agent.skill("relay", description="Asks the agent Probe.relay reaches to echo the input.")
    async def relay(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        client = probe.relay
        if client is None:
            message = "no relay client: the test sets Probe.relay"
            raise asap_errors.FailedPrecondition(message)
        hop = task_envelope(AGENT_ID, "echo", as_dict(request.payload.input))
        answer = await client.send(hop)
        return answer.envelope.task_response

    @agent.on(payload_pb2.McpToolCall)
    async def tool(request: Incoming[payload_pb2.McpToolCall]) -> payload_pb2.McpToolResult:
        result = payload_pb2.McpToolResult(request_id=request.payload.request_id, success=True)
        result.result.update({"tool": request.payload.tool_name})
        result.result.MergeFrom(request.payload.arguments)
        return result

    return agent


def envelope(
    skill: str, task_input: Mapping[str, object] | None = None, *, requires_ack: bool = False
) -> envelope_pb2.Envelope:
    """A TaskRequest envelope for the conformance agent (id, sender and time filled by the client)."""
    built = task_envelope(AGENT_ID, skill, dict(task_input) if task_input else None)
    built.requires_ack = requires_ack
    return built


def stamped(built: envelope_pb2.Envelope, *, sender: str = TESTER) -> envelope_pb2.Envelope:
    """Fill id, timestamp, version and sender as a client would (in place) and return the envelope."""
    if not built.sender:
        built.sender = sender
    validation.fill_defaults(built, now=time.time())
    return built


def tool_call_envelope(tool_name: str, arguments: Mapping[str, object]) -> envelope_pb2.Envelope:
    """An McpToolCall envelope for the conformance agent."""
    built = envelope_pb2.Envelope(recipient=AGENT_ID)
    built.mcp_tool_call.request_id = f"req-{tool_name}"
    built.mcp_tool_call.tool_name = tool_name
    json_format.ParseDict(dict(arguments), built.mcp_tool_call.arguments)
    return built


def kinds(envelopes: Sequence[envelope_pb2.Envelope]) -> list[str]:
    """The payload kind of each envelope (``task_update``, ``message_ack``, …)."""
    return [str(item.WhichOneof("payload")) for item in envelopes]


def text_metadata(metadata: Metadata) -> dict[str, str]:
    """The text entries of metadata as a dict (last value wins)."""
    return {key: value for key, value in metadata if isinstance(value, str)}


@dataclass
class Harness:
    """One started server with the conformance agent and a connected client.

    Attributes:
        client: A client connected as :data:`TESTER` (with the harness's token, if any).
        probe: What the agent's handlers report.
        server: The running server.
        agent_id: The agent's URN.
        url: The URL ``client`` connected to.
    """

    client: Client
    probe: Probe
    server: Server
    agent_id: str
    url: str
    _connect: ClientFactory

    def connect(
        self,
        *,
        sender: str = TESTER,
        token: str | None = None,
        timeout: float | None = 30.0,
        retries: int | None = None,
        interceptors: Sequence[ClientInterceptor] = (),
    ) -> Client:
        """Another client to the same server (closed at teardown).

        Args:
            sender: The default envelope sender.
            token: A bearer token (None: none).
            timeout: The default deadline.
            retries: Attempts in all for UNAVAILABLE (None: the client's default policy).
            interceptors: The client's interceptors.
        """
        return self._connect(
            sender=sender,
            token=token,
            timeout=timeout,
            retries=retries,
            interceptors=interceptors,
        )


class HarnessFactory(Protocol):
    """The ``make_harness`` fixture: starts a harness with a given server configuration."""

    async def __call__(
        self,
        *,
        limits: Limits | None = None,
        auth: BearerAuth | None = None,
        bind_sender: bool | None = None,
        token: str | None = None,
        interceptors: Sequence[Interceptor] = (),
        client_interceptors: Sequence[ClientInterceptor] = (),
        metrics: MetricsExporter | None = None,
        metrics_address: str | None = None,
        access_log: bool = False,
    ) -> Harness:
        """Start a server and connect a client."""
        ...


class ClientFactory(Protocol):
    """Makes clients for a harness; the conftest implements it (it knows the transport)."""

    def __call__(
        self,
        *,
        sender: str,
        token: str | None,
        timeout: float | None,
        retries: int | None,
        interceptors: Sequence[ClientInterceptor],
    ) -> Client:
        """Connect a new client."""
        ...
