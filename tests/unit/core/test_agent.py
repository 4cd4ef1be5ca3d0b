"""Unit tests for asap.core.agent.Agent: registration, routing and the manifest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

from asap import errors, schema
from asap.core.agent import ASAP_VERSION, Agent, Incoming
from asap.v1 import manifest_pb2, payload_pb2


if TYPE_CHECKING:
    from tests.unit.core.conftest import Kit


def _incoming(kit: Kit, payload: payload_pb2.TaskRequest) -> Incoming[payload_pb2.TaskRequest]:
    return Incoming(envelope=kit.envelope(payload), payload=payload, call=kit.ctx())


@pytest.mark.asyncio
async def test_skill_routes_to_its_handler(kit: Kit) -> None:
    """A TaskRequest goes to the handler registered for its skill_id."""
    agent = Agent("urn:asap:agent:a")

    @agent.skill("one")
    async def one(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(task_id="one")

    @agent.skill("two")
    async def two(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(task_id="two")

    route = agent.route_for(kit.task("two"))
    assert route.handler is two
    assert not route.streaming
    reply = await route.handler(_incoming(kit, kit.task("two")))  # type: ignore[misc]
    assert reply == payload_pb2.TaskResponse(task_id="two")
    assert agent.route_for(kit.task("one")).handler is one


def test_registration_returns_the_handler_unchanged() -> None:
    """The decorators return the function they register."""
    agent = Agent("urn:asap:agent:a")

    async def handler(request: Incoming[payload_pb2.TaskRequest]) -> None:
        return None

    assert agent.skill("s")(handler) is handler
    assert agent.on(payload_pb2.TaskRequest)(handler) is handler


def test_task_request_fallback_serves_unknown_skills(kit: Kit) -> None:
    """on(TaskRequest) serves skills without a handler of their own; own handlers win."""
    agent = Agent("urn:asap:agent:a")

    @agent.on(payload_pb2.TaskRequest)
    async def fallback(request: Incoming[payload_pb2.TaskRequest]) -> None:
        return None

    @agent.skill("own")
    async def own(request: Incoming[payload_pb2.TaskRequest]) -> None:
        return None

    assert agent.route_for(kit.task("anything")).handler is fallback
    assert agent.route_for(kit.task("own")).handler is own
    assert [skill.id for skill in agent.skills] == ["own"]


def test_unknown_skill_is_skill_not_found(kit: Kit) -> None:
    """A skill nobody handles raises SkillNotFound naming it."""
    agent = Agent("urn:asap:agent:a")
    with pytest.raises(errors.SkillNotFound) as caught:
        agent.route_for(kit.task("missing"))
    assert caught.value.code == errors.Code.NOT_FOUND
    assert caught.value.metadata == {"skill_id": "missing"}
    assert "missing" in caught.value.message


def test_unhandled_payload_kind_is_no_handler() -> None:
    """A payload kind without a handler raises NoHandler naming the kind."""
    agent = Agent("urn:asap:agent:a")
    with pytest.raises(errors.NoHandler) as caught:
        agent.route_for(payload_pb2.MessageSend())
    assert caught.value.code == errors.Code.UNIMPLEMENTED
    assert caught.value.metadata == {"payload": "MessageSend"}


def test_on_routes_by_payload_type() -> None:
    """on(kind) serves every payload of that type, and only that type."""
    agent = Agent("urn:asap:agent:a")

    @agent.on(payload_pb2.McpToolCall)
    async def tool(request: Incoming[payload_pb2.McpToolCall]) -> payload_pb2.McpToolResult:
        return payload_pb2.McpToolResult(success=True)

    assert agent.route_for(payload_pb2.McpToolCall(tool_name="x")).handler is tool
    with pytest.raises(errors.NoHandler):
        agent.route_for(payload_pb2.McpResourceFetch())


def test_async_generator_is_a_streaming_route() -> None:
    """An async generator function is registered as a streaming handler."""
    agent = Agent("urn:asap:agent:a")

    @agent.skill("stream")
    async def stream(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate]:
        yield payload_pb2.TaskUpdate()

    assert agent.route_for(payload_pb2.TaskRequest(skill_id="stream")).streaming


def test_a_plain_function_is_a_synchronous_route() -> None:
    """A plain function registers as a synchronous, non-streaming route."""
    agent = Agent("urn:asap:agent:a")

    @agent.skill("plain")
    def plain(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse()

    route = agent.route_for(payload_pb2.TaskRequest(skill_id="plain"))
    assert route.synchronous
    assert not route.streaming


def test_a_plain_generator_is_refused() -> None:
    """A (non-async) generator function raises TypeError, for skills and payload kinds alike."""
    agent = Agent("urn:asap:agent:a")

    def generator(request: Incoming[payload_pb2.TaskRequest]) -> object:
        yield None

    with pytest.raises(TypeError, match="function"):
        agent.skill("g")(generator)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="function"):
        agent.on(payload_pb2.TaskRequest)(generator)  # type: ignore[arg-type]
    assert agent.skills == []
    with pytest.raises(errors.SkillNotFound):
        agent.route_for(payload_pb2.TaskRequest(skill_id="g"))


def test_reregistering_a_skill_replaces_it() -> None:
    """A second handler for the same skill replaces the first and keeps one manifest entry."""
    agent = Agent("urn:asap:agent:a")

    @agent.skill("s", description="old")
    async def old(request: Incoming[payload_pb2.TaskRequest]) -> None:
        return None

    @agent.skill("s", description="new")
    async def new(request: Incoming[payload_pb2.TaskRequest]) -> None:
        return None

    assert agent.route_for(payload_pb2.TaskRequest(skill_id="s")).handler is new
    assert list(agent.skills) == [manifest_pb2.Skill(id="s", description="new")]


def test_name_defaults_to_the_last_urn_segment() -> None:
    """Without a name the agent is named after the last segment of its URN."""
    assert Agent("urn:asap:agent:research").name == "research"
    assert Agent("urn:asap:agent:research", name="Research").name == "Research"


def test_manifest_content() -> None:
    """The manifest carries identity, capabilities, skills in order, endpoints and auth."""
    agent = Agent(
        "urn:asap:agent:research", name="Research", version="2.0.0", description="Finds things."
    )

    @agent.skill("search", description="Searches.")
    async def search(request: Incoming[payload_pb2.TaskRequest]) -> None:
        return None

    @agent.skill("summarize", description="Summarizes.")
    async def summarize(request: Incoming[payload_pb2.TaskRequest]) -> None:
        return None

    agent.auth_schemes.append(manifest_pb2.AuthScheme(type=manifest_pb2.AUTH_SCHEME_TYPE_BEARER))
    endpoints = [
        manifest_pb2.Endpoint(transport=manifest_pb2.TRANSPORT_GRPC, url="grpc://127.0.0.1:1"),
        manifest_pb2.Endpoint(transport=manifest_pb2.TRANSPORT_WEBSOCKET, url="ws://127.0.0.1:2"),
    ]
    manifest = agent.manifest(endpoints)
    assert manifest.id == "urn:asap:agent:research"
    assert manifest.name == "Research"
    assert manifest.version == "2.0.0"
    assert manifest.description == "Finds things."
    assert manifest.capabilities == manifest_pb2.Capabilities(
        asap_version=ASAP_VERSION,
        streaming=True,
        acks=True,
        deduplication=True,
        schema_version=schema.schema_version(),
        payload_kinds=["task_request"],
        known_payload_kinds=schema.known_payload_kinds(),
    )
    assert [(s.id, s.description) for s in manifest.skills] == [
        ("search", "Searches."),
        ("summarize", "Summarizes."),
    ]
    assert list(manifest.endpoints) == endpoints
    assert [a.type for a in manifest.auth_schemes] == [manifest_pb2.AUTH_SCHEME_TYPE_BEARER]
    assert list(agent.manifest().endpoints) == []


def test_manifest_lists_handled_payload_kinds_in_field_order() -> None:
    """payload_kinds: kinds with a handler (skills count as task_request), schema order."""
    agent = Agent("urn:asap:agent:kinds")
    assert list(agent.manifest().capabilities.payload_kinds) == []

    @agent.on(payload_pb2.McpToolCall)
    async def tool(request: Incoming[payload_pb2.McpToolCall]) -> None:
        return None

    @agent.on(payload_pb2.TaskCancel)
    async def cancel(request: Incoming[payload_pb2.TaskCancel]) -> None:
        return None

    assert list(agent.manifest().capabilities.payload_kinds) == ["task_cancel", "mcp_tool_call"]

    @agent.skill("search")
    async def search(request: Incoming[payload_pb2.TaskRequest]) -> None:
        return None

    capabilities = agent.manifest().capabilities
    assert list(capabilities.payload_kinds) == ["task_request", "task_cancel", "mcp_tool_call"]
    assert "message_ack" in capabilities.known_payload_kinds
    assert capabilities.schema_version == schema.schema_version()
