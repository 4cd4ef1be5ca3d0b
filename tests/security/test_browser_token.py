"""Item 5: browsers authenticate the handshake with an ``asap.token.<base64url>`` subprotocol entry.

The server reads the token from the entry, never selects or echoes it, and refuses malformed
entries with 400 before the upgrade. ``?access_token=`` still works, deprecated (a warning).
"""

from __future__ import annotations

import base64
import logging
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from asap import validation
from asap.core.method import method
from asap.errors import Code
from asap.protocol.frames import SUBPROTOCOL_PROTO, ProtoCodec
from asap.protocol.token_entry import token_entry
from asap.transports.ws import handshake
from asap.v1 import agent_service_pb2, bridge_pb2, payload_pb2
from tests.security.conftest import AGENT_ID, CALLER_ID, TOKEN, RawWs, ServeFactory


pytestmark = pytest.mark.asyncio


async def _send_code(ws: ClientConnection) -> int:
    """Make one Send call with no metadata on ``ws``; the status code it ends with."""
    payload = payload_pb2.TaskRequest(conversation_id="c-1", skill_id="echo")
    envelope = validation.wrap(payload, sender=CALLER_ID, recipient=AGENT_ID)
    validation.fill_defaults(envelope, now=time.time())
    codec = ProtoCodec()
    start = bridge_pb2.CallStart(method=method("Send").path)
    await ws.send(
        codec.encode_start(
            1, start, agent_service_pb2.SendRequest(envelope=envelope), half_close=True
        )
    )
    while True:
        frame = codec.decode(await ws.recv())
        if frame.stream_id == 1 and frame.WhichOneof("kind") == "status":
            return frame.status.status.code


async def test_a_token_entry_authenticates_and_is_never_echoed(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """The entry authenticates calls without metadata; the server selects the real subprotocol."""
    served = await serve(auth=True)
    ws = await raw_ws(served.ws_url, subprotocols=[token_entry(TOKEN), SUBPROTOCOL_PROTO])
    assert ws.subprotocol == SUBPROTOCOL_PROTO
    assert ws.response is not None
    assert ws.response.headers.get_all("Sec-WebSocket-Protocol") == [SUBPROTOCOL_PROTO]
    assert await _send_code(ws) == Code.OK
    anonymous = await raw_ws(served.ws_url, subprotocols=[SUBPROTOCOL_PROTO])
    assert await _send_code(anonymous) == Code.UNAUTHENTICATED
    wrong = await raw_ws(served.ws_url, subprotocols=[SUBPROTOCOL_PROTO, token_entry("nope")])
    assert await _send_code(wrong) == Code.UNAUTHENTICATED


async def test_the_authorization_header_wins_over_a_token_entry(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """Credentials come from the header first, then the entry, then the query parameter."""
    served = await serve(auth=True)
    ws = await raw_ws(
        f"{served.ws_url}?access_token={TOKEN}",
        subprotocols=[SUBPROTOCOL_PROTO, token_entry(TOKEN)],
        additional_headers={"Authorization": "Bearer wrong"},
    )
    assert await _send_code(ws) == Code.UNAUTHENTICATED


def _entry(raw: bytes) -> str:
    return "asap.token." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "entries",
    [
        ["asap.token."],
        ["asap.token.a"],  # a length base64 cannot have
        ["asap.token.YR"],  # non-canonical: "a" with non-zero padding bits
        ["asap.token.YQ*"],  # not base64url
        [_entry(b"has space")],
        [_entry(b"\x00\x01")],
        [_entry(b"t" * 4097)],
        [token_entry(TOKEN), token_entry(TOKEN)],
        [token_entry(TOKEN)],  # no real subprotocol: refused without showing the entry
    ],
)
async def test_malformed_token_entries_are_refused_before_the_upgrade(
    serve: ServeFactory, entries: list[str]
) -> None:
    """400 with a message that never repeats the entry; the connection never upgrades."""
    served = await serve(auth=True)
    offered = entries if entries == [token_entry(TOKEN)] else [SUBPROTOCOL_PROTO, *entries]
    with pytest.raises(InvalidStatus) as caught:
        async with connect(served.ws_url, subprotocols=offered):  # type: ignore[arg-type]
            pass
    assert caught.value.response.status_code == 400
    body = caught.value.response.body.decode()
    for entry in entries:
        encoded = entry.removeprefix("asap.token.")
        assert len(encoded) < 4 or encoded not in body


async def test_the_access_token_query_parameter_still_works_with_a_warning(
    serve: ServeFactory, raw_ws: RawWs, caplog: pytest.LogCaptureFixture
) -> None:
    """Deprecated, kept for compatibility: it authenticates, and a warning (once) says so."""
    caplog.set_level(logging.WARNING, logger="asap.server")
    handshake._warn_access_token.cache_clear()  # it warns once per process
    served = await serve(auth=True)
    for _ in range(2):
        ws = await raw_ws(f"{served.ws_url}?access_token={TOKEN}")
        assert await _send_code(ws) == Code.OK
    warnings = [r.getMessage() for r in caplog.records if "access_token" in r.getMessage()]
    assert len(warnings) == 1
    assert "deprecated" in warnings[0]
    assert TOKEN not in warnings[0]
