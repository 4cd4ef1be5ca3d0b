"""One side of the skew matrix, run as its own process: a server, and a client on command.

Run with the next schema first on ``PYTHONPATH`` it is the "new" peer, without it the "old" one; the
code is the same and adapts to the schema it finds. It serves the skew agent on a gRPC and a
WebSocket listener (127.0.0.1, port 0) and prints ``{"grpc": url, "ws": url, "schema": version}``,
then reads one JSON command a line from stdin, ``{"case": name, "url": url, "subprotocol": s}``,
runs that client case against ``url`` and prints one JSON line: the observations, or the error
(class, code, reason, ErrorInfo metadata, detail type URLs). EOF on stdin stops it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

from google.protobuf import any_pb2, unknown_fields
from google.protobuf.message import Message

from asap import Agent, Client, Incoming, Server, connect, errors, schema, validation
from asap.v1 import envelope_pb2, error_pb2, part_pb2, payload_pb2, task_pb2


AGENT_ID = "urn:asap:agent:skew"
SENDER = "urn:asap:agent:skew-client"
QUOTA_URL = "type.googleapis.com/asap.v1.QuotaDetail"
ARCHIVED = 7
TOOL = 4
NEXT = hasattr(payload_pb2, "TaskArchive")
"""Whether this process runs the next schema."""

Observation = dict[str, object]


def _quota_detail() -> Message:
    """The next schema's QuotaDetail; on the old schema the same bytes in an Any it cannot read."""
    quota_cls = getattr(error_pb2, "QuotaDetail", None)
    if quota_cls is not None:
        detail: Message = quota_cls(resource="tasks", limit=3)
        return detail
    return any_pb2.Any(type_url=QUOTA_URL, value=b"\x0a\x05tasks\x10\x03")


def make_agent() -> Agent:
    """The skew agent: the same skills on both schemas."""
    agent = Agent(AGENT_ID, name="skew")

    @agent.skill("echo-parts")
    async def echo_parts(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        response = payload_pb2.TaskResponse(task_id="t-echo", status=task_pb2.TASK_STATUS_COMPLETED)
        response.parts.extend(request.payload.parts)  # copies keep unknown fields
        mine = response.parts.add().text
        mine.content = "from the server"
        if NEXT:
            mine.language = "en"  # type: ignore[attr-defined]
        return response

    @agent.skill("archived")
    async def archived(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        return payload_pb2.TaskResponse(task_id="t-old", status=ARCHIVED)  # type: ignore[arg-type]

    @agent.skill("quota")
    async def quota(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        message = "no quota left for t-1"
        raise errors.NotFound(message, metadata={"task_id": "t-1"}, details=[_quota_detail()])

    @agent.on(payload_pb2.MessageSend)
    async def mirror(request: Incoming[payload_pb2.MessageSend]) -> payload_pb2.MessageSend:
        return request.payload

    if NEXT:
        archive_cls = payload_pb2.TaskArchive  # type: ignore[attr-defined]

        @agent.on(archive_cls)
        async def archive(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
            return payload_pb2.TaskResponse(task_id="t-archived", status=ARCHIVED)  # type: ignore[arg-type]

    return agent


def _task(skill: str, *parts: part_pb2.Part) -> envelope_pb2.Envelope:
    payload = payload_pb2.TaskRequest(conversation_id="c-1", skill_id=skill, parts=parts)
    return validation.wrap(payload, recipient=AGENT_ID)


def _text(content: str, language: str | None = None) -> part_pb2.Part:
    part = part_pb2.Part()
    part.text.content = content
    if language is not None:
        part.text.language = language  # type: ignore[attr-defined]
    return part


def _language(part: part_pb2.Part) -> str | None:
    """The part's language if this schema has the field, else whether it was kept unknown."""
    if hasattr(part.text, "language"):
        return str(part.text.language) or None
    return "(unknown field kept)" if len(unknown_fields.UnknownFieldSet(part.text)) else None


async def baseline(client: Client) -> Observation:
    """A call both schemas know."""
    answer = (await client.send(_task("echo-parts", _text("hi")))).envelope.task_response
    return {"parts": [part.text.content for part in answer.parts]}


async def new_field(client: Client) -> Observation:
    """A field only the next schema has: sent by a new client, added by a new server."""
    sent = _text("hi", "fr") if NEXT else _text("hi")
    answer = (await client.send(_task("echo-parts", sent))).envelope.task_response
    echoed, added = answer.parts
    return {"echoed": _language(echoed), "added": _language(added)}


async def new_enum(client: Client) -> Observation:
    """An enum value only the next schema has, both ways."""
    status = (await client.send(_task("archived"))).envelope.task_response.status
    message = payload_pb2.MessageSend(conversation_id="c-1", role=TOOL)  # type: ignore[arg-type]
    mirrored = await client.send(validation.wrap(message, recipient=AGENT_ID))
    return {"status": int(status), "role": int(mirrored.envelope.message_send.role)}


async def new_detail(client: Client) -> Observation:
    """An error detail type only the next schema has (the server raises NotFound with it)."""
    await client.send(_task("quota"))
    return {"unexpected": "no error"}


def _archive() -> envelope_pb2.Envelope:
    envelope = envelope_pb2.Envelope(recipient=AGENT_ID)
    envelope.task_archive.task_id = "t-1"  # type: ignore[attr-defined]
    return envelope


async def new_payload(client: Client) -> Observation:
    """A payload kind only the next schema has, sent without checking first."""
    await client.send(_archive())
    return {"unexpected": "no error"}


async def new_payload_checked(client: Client) -> Observation:
    """The same, checked against the manifest first: refused locally, nothing sent."""
    await client.check_supported(client.prepare(_archive()))
    return {"unexpected": "no error"}


async def newer_major(client: Client) -> Observation:
    """An envelope of ASAP 2.0."""
    envelope = _task("echo-parts")
    envelope.asap_version = "2.0"
    await client.send(envelope)
    return {"unexpected": "no error"}


async def manifest(client: Client) -> Observation:
    """What the agent says about its schema."""
    capabilities = (await client.get_manifest()).capabilities
    return {
        "schema_version": capabilities.schema_version,
        "asap_version": capabilities.asap_version,
        "task_archive_known": "task_archive" in capabilities.known_payload_kinds,
        "task_archive_handled": "task_archive" in capabilities.payload_kinds,
    }


CASES: dict[str, Callable[[Client], Awaitable[Observation]]] = {
    case.__name__: case
    for case in (
        baseline,
        new_field,
        new_enum,
        new_detail,
        new_payload,
        new_payload_checked,
        newer_major,
        manifest,
    )
}


def _error(error: errors.AsapError) -> Observation:
    return {
        "error": type(error).__name__,
        "code": error.code.name,
        "reason": error.reason,
        "metadata": dict(error.metadata),
        "details": [errors.detail_type_url(detail) for detail in error.details],
        "resolved": [type(detail).__name__ for detail in error.details],
    }


async def main() -> None:
    server = Server(make_agent())
    server.add_grpc("127.0.0.1:0")
    server.add_websocket("127.0.0.1:0")
    await server.start()
    urls = {endpoint.url.split(":", 1)[0]: endpoint.url for endpoint in server.endpoints()}
    print(json.dumps({**urls, "schema": schema.schema_version()}), flush=True)  # noqa: T201
    clients: dict[tuple[str, str | None], Client] = {}
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            key = (command["url"], command.get("subprotocol"))
            if key not in clients:
                clients[key] = connect(
                    key[0], sender=SENDER, subprotocol=key[1] or "asap.v1.proto", timeout=20.0
                )
            try:
                result = await CASES[command["case"]](clients[key])
            except errors.AsapError as error:
                result = _error(error)
            print(json.dumps(result), flush=True)  # noqa: T201
    finally:
        for client in clients.values():
            await client.close()
        await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
