"""Item 0: the reproduced causes of untyped answers, each a typed answer now."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import json_format

from asap import validation
from asap.core.method import method
from asap.errors import Code
from asap.protocol.frames import SUBPROTOCOL_JSON, JsonCodec
from asap.v1 import agent_service_pb2, bridge_pb2, payload_pb2
from tests.security.conftest import AGENT_ID, CALLER_ID, RawWs, ServeFactory


pytestmark = pytest.mark.asyncio


def _send_request() -> agent_service_pb2.SendRequest:
    payload = payload_pb2.TaskRequest(conversation_id="c-1", skill_id="echo")
    payload.input.update({"n": 1})
    envelope = validation.wrap(payload, sender=CALLER_ID, recipient=AGENT_ID)
    validation.fill_defaults(envelope, now=time.time())
    return agent_service_pb2.SendRequest(envelope=envelope)


async def test_huge_json_integer_in_a_struct_fails_only_its_stream(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """``10**400`` inside a JSON Struct is INVALID_ARGUMENT for that call, not a 1011 close."""
    served = await serve()
    ws = await raw_ws(served.ws_url, subprotocols=[SUBPROTOCOL_JSON])
    start = bridge_pb2.CallStart(method=method("Send").path, half_close=True)
    start.message.typed.Pack(_send_request())
    document = json.loads(JsonCodec().encode(bridge_pb2.Frame(stream_id=1, start=start)))
    document["start"]["message"]["typed"]["envelope"]["taskRequest"]["input"]["n"] = 10**400
    await ws.send(json.dumps(document))
    answer = json_format.Parse(await ws.recv(), bridge_pb2.Frame(), ignore_unknown_fields=True)
    assert answer.stream_id == 1
    assert answer.status.status.code == Code.INVALID_ARGUMENT
    # The connection goes on: a valid call on the next stream succeeds.
    good = bridge_pb2.Frame(stream_id=3, start=start)
    await ws.send(JsonCodec().encode(good))
    answer = json_format.Parse(await ws.recv(), bridge_pb2.Frame(), ignore_unknown_fields=True)
    assert (answer.stream_id, answer.status.status.code) == (3, Code.OK), answer


async def test_bad_request_after_a_valid_one_on_a_grpc_stream_is_invalid_argument(
    serve: ServeFactory, raw_grpc: Callable[[str], grpc.aio.Channel]
) -> None:
    """Undecodable bytes after a valid StreamRequest: INVALID_ARGUMENT, never a hang or INTERNAL."""
    served = await serve()
    stream = raw_grpc(served.grpc_target).stream_stream(
        method("Stream").path, request_serializer=bytes, response_deserializer=bytes
    )
    good = agent_service_pb2.StreamRequest(envelope=_send_request().envelope)
    for _ in range(10):  # the race it fixes needs a write in flight: try it a few times
        good.envelope.id = validation.new_envelope_id()  # a fresh envelope each time
        call = stream(timeout=20)
        await call.write(good.SerializeToString())
        await call.write(b"\xff\xff\xff")
        await call.done_writing()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
