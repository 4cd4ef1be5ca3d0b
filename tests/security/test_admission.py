"""Item 3/5 (the parts done): strikes not reset by free calls; static tokens compared in constant time."""

from __future__ import annotations

import hmac

import pytest
from websockets.exceptions import ConnectionClosed

from asap import Limits
from asap.core.health import HEALTH_CHECK
from asap.core.method import method
from asap.core.middleware import BearerAuth
from asap.v1 import bridge_pb2
from tests.security.conftest import RawWs, ServeFactory


def _call(stream_id: int, path: str) -> bytes:
    start = bridge_pb2.CallStart(method=path, half_close=True)
    start.message.binary = b""
    return bridge_pb2.Frame(stream_id=stream_id, start=start).SerializeToString()


@pytest.mark.asyncio
async def test_free_health_checks_do_not_reset_rate_limit_strikes(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """Rate-limited calls with a health Check after each still reach the strike limit (1008)."""
    limits = Limits(
        rate_limit_per_second=0.001, rate_limit_burst=1, rate_limit_strikes_before_close=3
    )
    served = await serve(limits=limits)
    ws = await raw_ws(served.ws_url)
    stream_id = 1
    with pytest.raises(ConnectionClosed):  # noqa: PT012 - the loop runs until the close
        for _ in range(10):
            for path in (method("GetManifest").path, HEALTH_CHECK.path):
                await ws.send(_call(stream_id, path))
                stream_id += 2
                while True:
                    data = await ws.recv()
                    assert isinstance(data, bytes)
                    frame = bridge_pb2.Frame.FromString(data)
                    if frame.WhichOneof("kind") == "status":
                        break
    assert ws.protocol.close_rcvd is not None
    assert ws.protocol.close_rcvd.code == 1008


@pytest.mark.asyncio
async def test_static_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """BearerAuth.static checks an offered token with hmac.compare_digest against every known one."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    auth = BearerAuth.static({"tok-a": "urn:a", "tok-b": "urn:b"})
    verify = auth._verifier
    assert (await verify("tok-a")) is not None
    assert (await verify("tok-x")) is None
    assert len(calls) == 4
