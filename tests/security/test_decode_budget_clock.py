"""The decode budget charges a read the CPU time the loop thread spent on it, not wall time.

On a shared machine (or with another thread of the process holding the GIL) a read can take far
longer than its CPU work; charging that wait paused honest connections for nothing (issue 12: JSON
Send at 16 in flight was paused after most reads on a loaded 2-core machine). Here another thread
holds the GIL in long slices while a peer sends frames that cost well under the slice to decode: no
read may be paused. Charging wall time paused 6 to 19 reads of 40 here.
"""

from __future__ import annotations

import sys
import threading
import time

import pytest

from asap import Limits
from asap.protocol.frames import SUBPROTOCOL_JSON, JsonCodec
from asap.transports.ws.server import WebSocketServerTransport
from tests.security.conftest import RawWs, ServeFactory
from tests.security.test_decode_budgets import expensive_json_frame


pytestmark = pytest.mark.asyncio

READS = 40


def _frame(stream_id: int, members: int) -> str:
    """A unary Send CallStart whose Struct has ``members`` tiny members (costly to decode)."""
    return expensive_json_frame(members, stream_id)


def _decode_cost(text: str) -> float:
    """CPU seconds one decode of ``text`` takes here (the best of a few)."""
    codec = JsonCodec()
    costs = []
    for _ in range(5):
        started = time.thread_time()
        codec.decode(text)
        costs.append(time.thread_time() - started)
    return min(costs)


@pytest.mark.timeout(60)
async def test_waiting_for_the_gil_is_not_charged_to_the_peer(
    serve: ServeFactory, raw_ws: RawWs
) -> None:
    """Reads of ~1/8 slice of CPU, with the GIL taken away for 4 slices at a time: never paused."""
    cost = _decode_cost(_frame(1, 400))
    slice_ = 8 * cost
    served = await serve(limits=Limits(rate_limit_per_second=0, decode_slice=slice_))
    transport = next(
        t for t in served.server._transports if isinstance(t, WebSocketServerTransport)
    )
    ws = await raw_ws(served.ws_url, subprotocols=[SUBPROTOCOL_JSON])
    (conn,) = transport.open_connections()
    stop = threading.Event()

    def hold_the_gil() -> None:
        while not stop.is_set():
            pass

    switch = sys.getswitchinterval()
    sys.setswitchinterval(4 * slice_)  # each time the other thread runs, it keeps the GIL this long
    other = threading.Thread(target=hold_the_gil)
    other.start()
    paused = 0
    try:
        for index in range(READS):
            await ws.send(_frame(2 * index + 1, 400))
            await ws.recv()
            paused += conn._pause_timer is not None
    finally:
        stop.set()
        other.join()
        sys.setswitchinterval(switch)
    assert paused == 0, f"{paused} of {READS} reads paused (decode {cost * 1e3:.2f} ms)"
