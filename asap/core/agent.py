"""The agent API: register typed handlers for the payloads an agent serves.

Example::

    agent = Agent("urn:asap:agent:echo", name="Echo")

    @agent.skill("echo", description="Returns its input.")
    async def echo(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED, result=request.payload.input)

A handler is a coroutine function returning one reply, a plain function returning one reply
(it must not block; it runs without a task or a loop turn, the fastest path for a unary call), or
an async generator yielding several (for example TaskUpdates, then a TaskResponse). Every kind
serves every RPC: ``Send`` answers with the last item a generator yields; ``Subscribe`` and
``Stream`` deliver every item.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeAlias, TypeVar

from mypy_extensions import mypyc_attr

from asap import schema, validation
from asap.core.context import CallContext
from asap.errors import NoHandler, SkillNotFound
from asap.v1 import envelope_pb2, manifest_pb2, payload_pb2


Payload: TypeAlias = validation.Payload
"""Any payload an Envelope can carry."""

Reply: TypeAlias = Payload | envelope_pb2.Envelope
"""What a handler returns or yields: a payload (ASAP wraps it in an envelope) or a whole envelope."""

P = TypeVar("P", bound=Payload)


class Incoming(Generic[P]):
    """What a handler receives: the envelope, its typed payload and the call context.

    Read-only by contract rather than frozen: one is made per call. A plain class, not a
    dataclass: compiled (mypyc), its fields are a C struct's and its ``__init__`` native.
    (``payload`` cannot be ``Final``: its type is a type variable.)
    """

    __slots__ = ("call", "envelope", "payload")

    envelope: Final[envelope_pb2.Envelope]
    payload: P
    call: Final[CallContext]

    def __init__(self, envelope: envelope_pb2.Envelope, payload: P, call: CallContext) -> None:
        self.envelope = envelope
        self.payload = payload
        self.call = call

    def __repr__(self) -> str:
        return f"Incoming(envelope={self.envelope!r}, payload={self.payload!r}, call={self.call!r})"


UnaryHandler: TypeAlias = Callable[[Incoming[P]], Awaitable[Reply | None]]
SyncHandler: TypeAlias = Callable[[Incoming[P]], Reply | None]
StreamingHandler: TypeAlias = Callable[[Incoming[P]], AsyncIterator[Reply]]
Handler: TypeAlias = UnaryHandler[P] | SyncHandler[P] | StreamingHandler[P]


@dataclass(frozen=True, slots=True)
class Route:
    """A registered handler and whether it streams."""

    handler: Handler[Payload]
    streaming: bool
    synchronous: bool = False
    """A plain function: it never suspends, so a unary call may run to the end without a task."""


@mypyc_attr(allow_interpreted_subclasses=True)
class Agent:
    """An agent: its identity and manifest, and the handlers for the payloads it serves.

    Args:
        agent_id: The agent URN, for example ``"urn:asap:agent:research"``.
        name: A short name for people.
        version: The agent's version.
        description: What the agent does.
    """

    def __init__(
        self,
        agent_id: str,
        *,
        name: str = "",
        version: str = "0.1.0",
        description: str = "",
    ) -> None:
        self.id = agent_id
        self.name = name or agent_id.rsplit(":", 1)[-1]
        self.version = version
        self.description = description
        self._skills: dict[str, Route] = {}
        self._skill_docs: dict[str, manifest_pb2.Skill] = {}
        self._routes: dict[str, Route] = {}
        self.auth_schemes: list[manifest_pb2.AuthScheme] = []
        """Advertised in the manifest; set by the server from its authentication config."""

    def skill(
        self, skill_id: str, *, description: str = ""
    ) -> Callable[[Handler[payload_pb2.TaskRequest]], Handler[payload_pb2.TaskRequest]]:
        """Register the handler for TaskRequests naming ``skill_id``; it is listed in the manifest."""

        def register(handler: Handler[payload_pb2.TaskRequest]) -> Handler[payload_pb2.TaskRequest]:
            self._skills[skill_id] = _route(handler)
            self._skill_docs[skill_id] = manifest_pb2.Skill(id=skill_id, description=description)
            return handler

        return register

    def on(self, kind: type[P]) -> Callable[[Handler[P]], Handler[P]]:
        """Register the handler for every envelope whose payload is of type ``kind``.

        For TaskRequest it serves the skills that have no handler of their own.
        """

        def register(handler: Handler[P]) -> Handler[P]:
            self._routes[kind.DESCRIPTOR.full_name] = _route(handler)
            return handler

        return register

    def route_for(self, payload: Payload) -> Route:
        """Find the handler for a payload.

        Raises:
            SkillNotFound: a TaskRequest names a skill nobody handles.
            NoHandler: no handler is registered for this payload kind.
        """
        if isinstance(payload, payload_pb2.TaskRequest):
            route = self._skills.get(payload.skill_id) or self._routes.get(_TASK_REQUEST)
            if route is None:
                message = f"this agent has no skill {payload.skill_id!r}"
                raise SkillNotFound(message, metadata={"skill_id": payload.skill_id})
            return route
        route = self._routes.get(payload.DESCRIPTOR.full_name)
        if route is None:
            message = f"this agent does not handle {payload.DESCRIPTOR.name}"
            raise NoHandler(message, metadata={"payload": payload.DESCRIPTOR.name})
        return route

    @property
    def payload_kinds(self) -> Sequence[str]:
        """The ``Envelope.payload`` kinds this agent has a handler for, in field-number order."""
        oneof = envelope_pb2.Envelope.DESCRIPTOR.oneofs_by_name["payload"]
        handled = {
            field.name
            for field in oneof.fields
            if field.message_type is not None and field.message_type.full_name in self._routes
        }
        if self._skills:
            handled.add("task_request")
        return [kind for kind in schema.known_payload_kinds() if kind in handled]

    @property
    def skills(self) -> Sequence[manifest_pb2.Skill]:
        """The registered skills, in registration order."""
        return list(self._skill_docs.values())

    def manifest(self, endpoints: Sequence[manifest_pb2.Endpoint] = ()) -> manifest_pb2.Manifest:
        """Build the agent's manifest, listing the given endpoints."""
        return manifest_pb2.Manifest(
            id=self.id,
            name=self.name,
            version=self.version,
            description=self.description,
            capabilities=manifest_pb2.Capabilities(
                asap_version=ASAP_VERSION,
                streaming=True,
                acks=True,
                deduplication=True,
                schema_version=schema.schema_version(),
                payload_kinds=self.payload_kinds,
                known_payload_kinds=schema.known_payload_kinds(),
            ),
            skills=self.skills,
            endpoints=endpoints,
            auth_schemes=self.auth_schemes,
        )


ASAP_VERSION = validation.ASAP_VERSION
"""The protocol version this implementation speaks."""

_TASK_REQUEST = payload_pb2.TaskRequest.DESCRIPTOR.full_name


def _route(handler: Handler[P]) -> Route:
    streaming = inspect.isasyncgenfunction(handler)
    synchronous = not streaming and not inspect.iscoroutinefunction(handler)
    if synchronous and (inspect.isgeneratorfunction(handler) or not callable(handler)):
        message = "a handler must be a function, an async function or an async generator function"
        raise TypeError(message)
    # A handler for P is stored as a handler for any payload: route_for only hands it P instances.
    return Route(handler=handler, streaming=streaming, synchronous=synchronous)  # type: ignore[arg-type]
