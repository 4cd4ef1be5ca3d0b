"""Bounded, seeded fuzzing from outside: every bad input gets a typed answer (issue 11, item 0).

Captured valid frames and request bodies are mutated (bit flips, splices, truncation, JSON leaves
replaced by hostile values such as ``10**400``) and mixed with random bytes, then sent on both
bridge subprotocols (``asap.v1.1.proto``, ``asap.v1.1.json``) and as raw gRPC requests to every
method, health included. The only outcomes allowed are typed ones: a status other than UNKNOWN or
INTERNAL, and for the bridge a close code from {1002, 1007, 1009}, never 1011 or an aborted TCP
connection; a connection that is still open answers a ping (no hang), and a gRPC call ends before
its deadline. Meanwhile a canary client on another connection makes calls and sees no error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from asap import validation
from asap.core.health import HEALTH_CHECK
from asap.core.method import METHODS, method
from asap.protocol.frames import SUBPROTOCOL_JSON, SUBPROTOCOL_PROTO, JsonCodec
from asap.v1 import agent_service_pb2, bridge_pb2, envelope_pb2, payload_pb2
from tests.security.conftest import AGENT_ID, CALLER_ID, Canary, RawWs, ServeFactory


pytestmark = pytest.mark.asyncio

SEED = 1111
FRAMES_PER_SUBPROTOCOL = 4000
GRPC_CALLS = 1500
UNTYPED_CODES = frozenset({2, 13})  # UNKNOWN, INTERNAL
TYPED_CLOSES = frozenset({1002, 1007, 1009})
HOSTILE: tuple[object, ...] = (
    10**400,
    -(10**400),
    2**64,
    -1,
    1e308,
    "",
    "\u0000",
    [],
    {},
    None,
    True,
    "A" * 300,
)
LIVENESS_EVERY = 40


def _envelope(rng: random.Random) -> envelope_pb2.Envelope:
    payload = payload_pb2.TaskRequest(conversation_id="c-1", skill_id="echo")
    payload.input.update({"n": rng.randint(0, 9), "s": "x"})
    envelope = validation.wrap(payload, sender=CALLER_ID, recipient=AGENT_ID)
    validation.fill_defaults(envelope, now=time.time())
    return envelope


def _requests(rng: random.Random) -> dict[str, Message]:
    """One valid request per method path."""
    return {
        method("Send").path: agent_service_pb2.SendRequest(envelope=_envelope(rng)),
        method("SendBatch").path: agent_service_pb2.SendBatchRequest(
            envelopes=[_envelope(rng), _envelope(rng)]
        ),
        method("Subscribe").path: agent_service_pb2.SubscribeRequest(envelope=_envelope(rng)),
        method("Publish").path: agent_service_pb2.PublishRequest(envelope=_envelope(rng)),
        method("Stream").path: agent_service_pb2.StreamRequest(envelope=_envelope(rng)),
        method("GetManifest").path: agent_service_pb2.GetManifestRequest(),
        HEALTH_CHECK.path: health_pb2.HealthCheckRequest(service=""),
    }


def _seed_frames(rng: random.Random, stream_id: int) -> list[bridge_pb2.Frame]:
    """Valid frames of every kind, for one fresh stream id."""
    path, request = rng.choice(list(_requests(rng).items()))
    body = bridge_pb2.MessageFrame(binary=request.SerializeToString())
    typed = bridge_pb2.MessageFrame()
    typed.typed.Pack(request)
    entries = [bridge_pb2.MetadataEntry(key="x-a", text="b")]
    start = bridge_pb2.CallStart(
        method=path, metadata=entries, timeout=duration_pb2.Duration(seconds=5)
    )
    combined = bridge_pb2.CallStart()
    combined.CopyFrom(start)
    combined.message.CopyFrom(rng.choice((body, typed)))
    combined.half_close = True
    return [
        bridge_pb2.Frame(stream_id=stream_id, start=combined),
        bridge_pb2.Frame(stream_id=stream_id, start=start),
        bridge_pb2.Frame(stream_id=stream_id, message=rng.choice((body, typed))),
        bridge_pb2.Frame(stream_id=stream_id, half_close=bridge_pb2.HalfClose()),
        bridge_pb2.Frame(stream_id=stream_id, cancel=bridge_pb2.Cancel(reason="r")),
        bridge_pb2.Frame(
            stream_id=stream_id, window_update=bridge_pb2.WindowUpdate(increment_bytes=9)
        ),
        bridge_pb2.Frame(ping=bridge_pb2.Ping(nonce=rng.randint(0, 2**63))),
        bridge_pb2.Frame(settings=bridge_pb2.Settings(initial_window_bytes=70000)),
    ]


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """Flip, insert, delete, truncate or splice bytes."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if not out or choice < 0.1:
            out += rng.randbytes(rng.randint(1, 16))
        elif choice < 0.45:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice < 0.6:
            out.insert(rng.randrange(len(out) + 1), rng.randrange(256))
        elif choice < 0.75:
            del out[rng.randrange(len(out))]
        elif choice < 0.85:
            del out[rng.randrange(len(out)) :]
        else:
            start = rng.randrange(len(out))
            out[start:start] = out[start : start + rng.randint(1, 32)]
    return bytes(out)


def _mutate_json(rng: random.Random, value: object, depth: int = 0) -> object:
    """Replace one leaf (or member) somewhere in a JSON document with a hostile value."""
    if isinstance(value, dict) and value and depth < 12:
        key = rng.choice(list(value))
        copy = dict(value)
        if rng.random() < 0.75:
            copy[key] = _mutate_json(rng, value[key], depth + 1)
        elif rng.random() < 0.5:
            del copy[key]
        else:
            copy[rng.choice(("streamId", "start", "message", "typed", "@type", "zz"))] = rng.choice(
                HOSTILE
            )
        return copy
    if isinstance(value, list) and value and depth < 12:
        copy_list = list(value)
        index = rng.randrange(len(copy_list))
        copy_list[index] = _mutate_json(rng, copy_list[index], depth + 1)
        return copy_list
    return rng.choice(HOSTILE)


def _hostile_numbers(rng: random.Random, value: object) -> object:
    """Replace every number but the stream id by a huge, negative or out-of-range one."""
    if isinstance(value, dict):
        return {
            key: item if key == "streamId" else _hostile_numbers(rng, item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_hostile_numbers(rng, item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return rng.choice((10**400, -(10**400), 2**64, -1, 1e308))
    return value


def fuzz_proto(rng: random.Random, stream_id: int) -> bytes:
    """A mutated (or random) binary frame."""
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.randint(0, 64))
    frame = rng.choice(_seed_frames(rng, stream_id))
    if roll < 0.3:
        return frame.SerializeToString()
    return mutate_bytes(rng, frame.SerializeToString())


def fuzz_json(rng: random.Random, stream_id: int) -> str:
    """A mutated (or random) JSON frame (always valid UTF-8 text)."""
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randint(0, 64)).decode("latin-1")
    text = JsonCodec().encode(rng.choice(_seed_frames(rng, stream_id)))
    if roll < 0.2:
        return text
    if roll < 0.35:
        return json.dumps(_hostile_numbers(rng, json.loads(text)))
    if roll < 0.75:
        return json.dumps(_mutate_json(rng, json.loads(text)))
    return mutate_bytes(rng, text.encode()).decode("utf-8", "replace")


def _status_code(data: str | bytes) -> int | None:
    """The code of a CallStatus frame the server sent, or None for other frames."""
    if isinstance(data, bytes):
        frame = bridge_pb2.Frame.FromString(data)
    else:
        frame = json_format.Parse(data, bridge_pb2.Frame(), ignore_unknown_fields=True)
    return frame.status.status.code if frame.WhichOneof("kind") == "status" else None


class Outcomes:
    """What the fuzzer saw, by kind; ``bad`` lists the untyped ones."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.bad: list[str] = []

    def add(self, outcome: str, *, typed: bool) -> None:
        self.seen[outcome] += 1
        if not typed:
            self.bad.append(outcome)


async def _read_statuses(ws: ClientConnection, outcomes: Outcomes) -> None:
    try:
        async for data in ws:
            code = _status_code(data)
            if code is not None:
                outcomes.add(f"status {code}", typed=code not in UNTYPED_CODES)
    except ConnectionClosed:
        return


async def fuzz_bridge(
    raw_ws: RawWs, url: str, subprotocol: str, rng: random.Random, outcomes: Outcomes
) -> None:
    """Send FRAMES_PER_SUBPROTOCOL fuzzed frames, reconnecting whenever the server closes."""
    make: Callable[[random.Random, int], bytes | str] = (
        fuzz_proto if subprotocol == SUBPROTOCOL_PROTO else fuzz_json
    )
    sent = 0
    while sent < FRAMES_PER_SUBPROTOCOL:
        ws = await raw_ws(url, subprotocols=[subprotocol])
        reader = asyncio.create_task(_read_statuses(ws, outcomes))
        stream_id = 1
        closed_by_server = False
        try:
            while sent < FRAMES_PER_SUBPROTOCOL:
                stream_id += rng.randint(1, 3)
                await ws.send(make(rng, stream_id))
                sent += 1
                if sent % LIVENESS_EVERY == 0:
                    pong = await ws.ping()
                    await asyncio.wait_for(pong, 10)  # an open connection still answers
        except ConnectionClosed:
            closed_by_server = True
        finally:
            if not closed_by_server:
                await ws.close()
            await reader
        if closed_by_server:
            rcvd = ws.protocol.close_rcvd
            if rcvd is None:
                outcomes.add("connection dropped without a close frame", typed=False)
            else:
                outcomes.add(f"close {rcvd.code}", typed=rcvd.code in TYPED_CLOSES)


async def _grpc_call(
    channel: grpc.aio.Channel,
    path: str,
    payloads: list[bytes],
    streaming_in: bool,
    outcomes: Outcomes,
) -> None:
    identity: Callable[[bytes], bytes] = bytes
    try:
        if path == "/grpc.health.v1.Health/Watch":
            call = channel.unary_stream(
                path, request_serializer=identity, response_deserializer=identity
            )
            responses = call(payloads[0], timeout=10)
            async for _ in responses:
                responses.cancel()  # Watch streams forever by design: one answer is enough
                break
            code = await responses.code()
            if code is grpc.StatusCode.CANCELLED:
                outcomes.add("watch answered", typed=True)
                return
        elif streaming_in:
            # call.write, not a request iterator: grpc.aio's iterator consumer reports its own
            # INTERNAL ("Internal error from Core") when the server ends the call mid-upload.
            stream = channel.stream_stream(
                path, request_serializer=identity, response_deserializer=identity
            )
            bidi = stream(timeout=10)
            for payload in payloads:
                if bidi.done():
                    break
                with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    await bidi.write(payload)
            with contextlib.suppress(asyncio.InvalidStateError, grpc.aio.AioRpcError):
                await bidi.done_writing()
            async for _ in bidi:
                pass
        else:
            unary = channel.unary_stream(
                path, request_serializer=identity, response_deserializer=identity
            )
            async for _ in unary(payloads[0], timeout=10):
                pass
        outcomes.add("grpc OK", typed=True)
    except grpc.aio.AioRpcError as exc:
        if "SendMessageOperation" in (exc.debug_error_string() or ""):
            # The grpc.aio *client* failed to send a request after the server had already answered
            # (its status is then lost on the client side: "Internal error from Core"). Not an
            # answer of the server; counted apart.
            outcomes.add("grpc client send after the server's answer", typed=True)
            return
        code_value = exc.code().value[0]
        hang = exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        typed = code_value not in UNTYPED_CODES and not hang
        outcomes.add(
            f"grpc {exc.code().name}" + ("" if typed else f" {path} {exc.details()}"), typed=typed
        )


async def fuzz_grpc(channel: grpc.aio.Channel, rng: random.Random, outcomes: Outcomes) -> None:
    """GRPC_CALLS calls with mutated or random request bodies, 20 at a time."""
    paths = [spec.path for spec in METHODS.values()]
    paths += [HEALTH_CHECK.path, "/grpc.health.v1.Health/Watch", "/asap.v1.AgentService/Nope"]
    streaming = {spec.path for spec in METHODS.values() if spec.client_streaming}
    requests = _requests(rng)
    jobs = []
    for _ in range(GRPC_CALLS):
        path = rng.choice(paths)
        seed = requests.get(path, rng.choice(list(requests.values()))).SerializeToString()
        count = rng.randint(1, 4) if path in streaming else 1
        payloads = [
            seed
            if rng.random() < 0.3
            else (mutate_bytes(rng, seed) if rng.random() < 0.85 else rng.randbytes(20))
            for _ in range(count)
        ]
        jobs.append((path, payloads, path in streaming))
    for start in range(0, len(jobs), 20):
        await asyncio.gather(
            *(
                _grpc_call(channel, path, payloads, s, outcomes)
                for path, payloads, s in jobs[start : start + 20]
            )
        )


def _rng(seed: float) -> random.Random:
    return random.Random(seed)  # noqa: S311 - fuzzing, not cryptography


@pytest.mark.timeout(60)
async def test_fuzzed_input_gets_only_typed_outcomes_and_the_canary_no_errors(
    serve: ServeFactory,
    raw_ws: RawWs,
    raw_grpc: Callable[[str], grpc.aio.Channel],
    canary: Callable[[str], Canary],
) -> None:
    """Mutated and random frames and bodies on both subprotocols and raw gRPC: typed outcomes only."""
    served = await serve()
    bird = canary(served.ws_url)
    grpc_bird = canary(f"grpc://{served.grpc_target}")
    birds = [asyncio.create_task(bird.run()), asyncio.create_task(grpc_bird.run())]
    rng = random.Random(SEED)  # noqa: S311 - fuzzing, not cryptography
    seeds = [rng.random() for _ in range(3)]
    outcomes = Outcomes()
    await asyncio.gather(
        fuzz_bridge(raw_ws, served.ws_url, SUBPROTOCOL_PROTO, _rng(seeds[0]), outcomes),
        fuzz_bridge(raw_ws, served.ws_url, SUBPROTOCOL_JSON, _rng(seeds[1]), outcomes),
        fuzz_grpc(raw_grpc(served.grpc_target), _rng(seeds[2]), outcomes),
    )
    bird.stop.set()
    grpc_bird.stop.set()
    await asyncio.gather(*birds)
    assert not outcomes.bad, Counter(outcomes.bad)
    assert outcomes.seen, "the fuzzer saw no outcome"
    assert bird.errors == []
    assert grpc_bird.errors == []
    assert bird.latencies
    assert grpc_bird.latencies
