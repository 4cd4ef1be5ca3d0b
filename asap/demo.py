"""``make demo``: serve the example agent on both transports and make every kind of call over each.

Prints one row per call with what a gRPC caller and a WebSocket caller saw, side by side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from asap.client import Client, task_envelope
from asap.connect import connect
from asap.errors import AsapError
from asap.example import agent
from asap.server import Server
from asap.v1 import envelope_pb2, payload_pb2


Step = Callable[[Client], Awaitable[str]]


def _payload(envelope: envelope_pb2.Envelope) -> str:
    return envelope.WhichOneof("payload") or "-"


async def _send_echo(client: Client) -> str:
    response = await client.send(task_envelope(agent.id, "echo", {"text": "hello"}))
    return f"{_payload(response.envelope)} {dict(response.envelope.task_response.result)}"


async def _send_acked(client: Client) -> str:
    envelope = task_envelope(agent.id, "echo", {"n": 1})
    envelope.requires_ack = True
    first = await client.send(envelope)
    again = await client.send(envelope)  # a retransmission: answered from the dedupe window
    same = first.envelope.id == again.envelope.id
    ack = payload_pb2.AckStatus.Name(first.ack.status).removeprefix("ACK_STATUS_")
    return f"ack {ack}, retransmission answered from dedupe: {same}"


async def _subscribe(client: Client) -> str:
    kinds = []
    async with await client.subscribe(task_envelope(agent.id, "stream", {"steps": 3})) as items:
        kinds = [_payload(item) async for item in items]
    return " → ".join(kinds)


async def _batch(client: Client) -> str:
    results = await client.send_batch(
        [task_envelope(agent.id, "echo", {"i": 1}), task_envelope(agent.id, "nope")]
    )
    return ", ".join("ok" if r.HasField("envelope") else f"error {r.error.code}" for r in results)


async def _publish(client: Client) -> str:
    results = await client.publish([task_envelope(agent.id, "echo", {"i": i}) for i in range(3)])
    return f"{len(results)} results, all ok: {all(r.HasField('envelope') for r in results)}"


async def _duplex(client: Client) -> str:
    stream = await client.stream()
    async with stream:
        envelope = task_envelope(agent.id, "stream", {"steps": 2})
        envelope.requires_ack = True
        await stream.send(envelope)
        await stream.done_sending()
        kinds = [
            _payload(item.envelope) if item.HasField("envelope") else "error"
            async for item in stream
        ]
    return " → ".join(kinds)


async def _fail(client: Client) -> str:
    try:
        await client.send(task_envelope(agent.id, "fail", {"code": "PERMISSION_DENIED"}))
    except AsapError as error:
        return f"{type(error).__name__} {error.code.name} ({error.reason})"
    return "no error?"


async def _deadline(client: Client) -> str:
    try:
        await client.send(task_envelope(agent.id, "stream", {"steps": 1000}), timeout=0.001)
    except AsapError as error:
        return f"{type(error).__name__} {error.code.name}"
    return "finished in time"


async def _manifest(client: Client) -> str:
    manifest = await client.get_manifest()
    return f"{manifest.id}: {len(manifest.skills)} skills, {len(manifest.endpoints)} endpoints"


STEPS: list[tuple[str, Step]] = [
    ("Send echo", _send_echo),
    ("Send requires_ack + retransmit", _send_acked),
    ("Subscribe stream", _subscribe),
    ("SendBatch (1 ok, 1 bad skill)", _batch),
    ("Publish 3", _publish),
    ("Stream duplex", _duplex),
    ("Send fail", _fail),
    ("Send with 1 ms deadline", _deadline),
    ("GetManifest", _manifest),
]


async def main() -> None:
    """Entry point of ``python -m asap.demo``."""
    server = Server(agent)
    server.add_grpc("127.0.0.1:0")
    server.add_websocket("127.0.0.1:0")
    await server.start()
    try:
        urls = [endpoint.url for endpoint in server.endpoints()]
        print("ASAP demo: the example agent served on")  # noqa: T201
        for url in urls:
            print(f"  {url}")  # noqa: T201
        clients = [connect(url, sender="urn:asap:agent:demo") for url in urls]
        rows: list[tuple[str, list[str]]] = []
        for title, step in STEPS:
            cells = []
            for client in clients:
                started = time.perf_counter()
                try:
                    outcome = await step(client)
                except AsapError as error:
                    outcome = f"unexpected {error}"
                cells.append(f"{outcome} [{(time.perf_counter() - started) * 1000:.1f} ms]")
            rows.append((title, cells))
        for client in clients:
            await client.close()
    finally:
        await server.stop(1.0)
    width = max(len(title) for title, _ in rows)
    headers = ["gRPC", "WebSocket bridge"]
    print()  # noqa: T201
    for title, cells in rows:
        print(f"{title:<{width}}")  # noqa: T201
        for header, cell in zip(headers, cells, strict=True):
            print(f"  {header:<17} {cell}")  # noqa: T201
    print("\nSame calls, same outcomes, both transports. Server stopped.")  # noqa: T201
    print(  # noqa: T201
        "Interceptors, traces, metrics and the access log: docs/observability.md; "
        "`.venv/bin/python examples/observability.py` prints a two-agent trace and metrics."
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())
