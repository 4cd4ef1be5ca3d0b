"""asap.v1.json against a live server, frame by frame, as a peer with another schema would write it.

Binary bodies are accepted and answered in kind; a call message of a type the server lacks no longer
turns an unknown method into a malformed frame; a newer payload kind is UNKNOWN_PAYLOAD; an unknown
enum name is refused with MALFORMED_FRAME (not read as 0); unknown members are ignored.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pytest
from google.protobuf import json_format

from asap import errors
from asap.protocol.frames import SUBPROTOCOL_JSON
from asap.server import Server
from asap.v1 import agent_service_pb2, status_pb2


if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from tests.transports.conftest import Kit
    from tests.transports.ws.conftest import RawFactory

SEND = "/asap.v1.AgentService/Send"


async def _call(
    ws: ClientConnection, stream_id: int, message: Mapping[str, object]
) -> dict[str, object]:
    """Send one combined JSON CallStart; return the server's CallStatus frame as a dict."""
    start = {"method": SEND, "timeout": "10s", "message": message, "halfClose": True}
    await ws.send(json.dumps({"streamId": stream_id, "start": start}))
    while True:
        data = await ws.recv()
        assert isinstance(data, str)
        frame: dict[str, object] = json.loads(data)
        if "status" in frame:
            assert frame["streamId"] == stream_id
            return frame


def _error(frame: dict[str, object]) -> errors.AsapError:
    status_json = frame["status"]
    assert isinstance(status_json, dict)
    status = json_format.ParseDict(status_json.get("status", {}), status_pb2.Status())
    return errors.from_status(status)


def _envelope_json(kit: Kit, skill: str = "echo") -> dict[str, object]:
    envelope = json_format.MessageToDict(kit.envelope(skill, text="hi"))
    assert isinstance(envelope, dict)
    return envelope


@pytest.mark.asyncio
async def test_binary_body_is_accepted_and_answered_in_binary(
    server: Server, raw: RawFactory, kit: Kit
) -> None:
    """A JSON client that sends MessageFrame.binary (base64) gets its answer in binary too,
    unknown fields included (the server's reply envelope would keep fields it copied)."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON])
    request = kit.send_request("echo", text="hi")
    body = {"binary": base64.b64encode(request.SerializeToString()).decode()}
    frame = await _call(ws, 1, body)
    status = frame["status"]
    assert isinstance(status, dict)
    assert status.get("status", {}) == {}
    assert set(status["message"]) == {"binary"}
    response = agent_service_pb2.SendResponse.FromString(
        base64.b64decode(status["message"]["binary"])
    )
    assert response.envelope.task_response.result["text"] == "hi"
    # The same connection, a typed call: answered typed.
    typed = {
        "typed": {
            "@type": "type.googleapis.com/asap.v1.SendRequest",
            "envelope": _envelope_json(kit),
        }
    }
    frame = await _call(ws, 3, typed)
    assert set(frame["status"]["message"]) == {"typed"}  # type: ignore[index]


@pytest.mark.asyncio
async def test_newer_payload_kind_is_unknown_payload(
    server: Server, raw: RawFactory, kit: Kit
) -> None:
    """An envelope whose only payload is a member the server lacks: UNIMPLEMENTED/UNKNOWN_PAYLOAD."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON])
    envelope = _envelope_json(kit)
    del envelope["taskRequest"]
    envelope["taskArchive"] = {"taskId": "t-1"}
    typed = {"typed": {"@type": "type.googleapis.com/asap.v1.SendRequest", "envelope": envelope}}
    error = _error(await _call(ws, 1, typed))
    assert type(error) is errors.UnknownPayload
    assert (error.code, error.reason) == (errors.Code.UNIMPLEMENTED, "UNKNOWN_PAYLOAD")


@pytest.mark.asyncio
async def test_unknown_members_are_ignored(server: Server, raw: RawFactory, kit: Kit) -> None:
    """New fields in the envelope and payload do not fail the call; the known ones are read."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON])
    envelope = _envelope_json(kit)
    envelope["tenant"] = "acme"
    envelope["taskRequest"]["priority"] = 5  # type: ignore[index]
    typed = {"typed": {"@type": "type.googleapis.com/asap.v1.SendRequest", "envelope": envelope}}
    frame = await _call(ws, 1, typed)
    answer = frame["status"]["message"]["typed"]["envelope"]  # type: ignore[index]
    assert answer["taskResponse"]["result"] == {"text": "hi"}


@pytest.mark.asyncio
async def test_unknown_enum_name_is_refused(server: Server, raw: RawFactory, kit: Kit) -> None:
    """An enum value name the server lacks fails the call with MALFORMED_FRAME, never becomes 0."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON])
    envelope = _envelope_json(kit)
    del envelope["taskRequest"]
    envelope["messageSend"] = {"role": "MESSAGE_ROLE_TOOL"}
    typed = {"typed": {"@type": "type.googleapis.com/asap.v1.SendRequest", "envelope": envelope}}
    error = _error(await _call(ws, 1, typed))
    assert type(error) is errors.MalformedFrame
    assert "enum" in error.message


@pytest.mark.asyncio
async def test_request_of_an_unknown_type_for_an_unknown_method_is_unknown_method(
    server: Server, raw: RawFactory, kit: Kit
) -> None:
    """A newer client calling a newer RPC gets UNIMPLEMENTED/UNKNOWN_METHOD, not MALFORMED_FRAME,
    although the server cannot read the request type either."""
    ws = await raw(kit.url(server), subprotocols=[SUBPROTOCOL_JSON])
    typed = {"typed": {"@type": "type.googleapis.com/asap.v1.ArchiveRequest", "taskId": "t"}}
    start = {"method": "/asap.v1.AgentService/Archive", "message": typed, "halfClose": True}
    await ws.send(json.dumps({"streamId": 1, "start": start}))
    data = await ws.recv()
    assert isinstance(data, str)
    error = _error(json.loads(data))
    assert type(error) is errors.UnknownMethod
