"""The RPC method table, read from the generated service descriptor."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final

from google.protobuf import message_factory
from google.protobuf.message import Message

from asap.v1 import agent_service_pb2


SERVICE_NAME: Final = "asap.v1.AgentService"
"""The fully qualified name of the one service ASAP serves."""


class Arity(enum.Enum):
    """How many messages flow each way in a call."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """One RPC: its path, message types and arity."""

    name: str
    """The method name, for example ``"Send"``."""
    path: str
    """The gRPC path, for example ``"/asap.v1.AgentService/Send"``."""
    request_type: type[Message]
    response_type: type[Message]
    arity: Arity
    client_streaming: bool = field(init=False, compare=False)
    """True when the caller sends a stream of messages."""
    server_streaming: bool = field(init=False, compare=False)
    """True when the server answers with a stream of messages."""

    def __post_init__(self) -> None:
        # Read on every call's path: worked out once here rather than by a property each time.
        arity = self.arity
        object.__setattr__(
            self, "client_streaming", arity in (Arity.STREAM_UNARY, Arity.STREAM_STREAM)
        )
        object.__setattr__(
            self, "server_streaming", arity in (Arity.UNARY_STREAM, Arity.STREAM_STREAM)
        )


def _arity(client_streaming: bool, server_streaming: bool) -> Arity:
    if client_streaming:
        return Arity.STREAM_STREAM if server_streaming else Arity.STREAM_UNARY
    return Arity.UNARY_STREAM if server_streaming else Arity.UNARY_UNARY


def _load_methods() -> dict[str, MethodSpec]:
    service = agent_service_pb2.DESCRIPTOR.services_by_name["AgentService"]
    methods: dict[str, MethodSpec] = {}
    for method in service.methods:
        spec = MethodSpec(
            name=method.name,
            path=f"/{SERVICE_NAME}/{method.name}",
            request_type=message_factory.GetMessageClass(method.input_type),
            response_type=message_factory.GetMessageClass(method.output_type),
            arity=_arity(method.client_streaming, method.server_streaming),
        )
        methods[spec.path] = spec
    return methods


METHODS: Final[dict[str, MethodSpec]] = _load_methods()
"""Every method of AgentService, by path."""


def method(name: str) -> MethodSpec:
    """Return the spec of a method by its short name (``"Send"``)."""
    return METHODS[f"/{SERVICE_NAME}/{name}"]
