"""A client that keeps working while its server restarts, with every envelope processed once.

Run: ``.venv/bin/python examples/survive_restart.py``

The client sends envelopes in a loop while the server is stopped and started again on the same
port. Calls that fail with UNAVAILABLE are retried with exponential backoff and jitter, with the
same envelope ids; the restarted server shares the dedupe store (as replicas would share Redis),
so a retried envelope that had already been processed is answered from the store, not run again.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

from asap import Agent, Incoming, RetryPolicy, Server, connect, task_envelope
from asap.core.dedupe import InMemoryDedupeStore
from asap.v1 import payload_pb2, task_pb2


agent = Agent("urn:asap:agent:ledger", description="Records entries exactly once.")
processed: Counter[str] = Counter()


@agent.skill("record")
async def record(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
    """Count how often each envelope is processed."""
    processed[request.envelope.id] += 1
    return payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED)


def free_port() -> int:
    """Pick a free loopback port for both server generations."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def main() -> None:
    """Send 30 envelopes while the server restarts after the tenth."""
    port = free_port()
    store = InMemoryDedupeStore()
    retry = RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=0.5)
    server = Server(agent, dedupe=store)
    server.add_grpc(f"127.0.0.1:{port}")
    await server.start()
    answered = 0
    async with connect(
        f"grpc://127.0.0.1:{port}", sender="urn:asap:agent:client", retry=retry
    ) as client:
        for number in range(30):
            if number == 10:
                await server.stop(1.0)
                print("server stopped; restarting on the same port")
                server = Server(agent, dedupe=store)
                server.add_grpc(f"127.0.0.1:{port}")
                restart = asyncio.create_task(server.start())
            await client.send(task_envelope(agent.id, "record", {"n": number}))
            answered += 1
            if number == 10:
                await restart
    await server.stop(1.0)
    duplicates = sum(1 for count in processed.values() if count > 1)
    print(f"answered {answered} of 30, processed {len(processed)} envelopes, {duplicates} twice")


if __name__ == "__main__":
    asyncio.run(main())
