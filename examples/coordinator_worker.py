"""A coordinator agent that delegates work to a worker agent and streams the worker's progress.

Run: ``.venv/bin/python examples/coordinator_worker.py``

The worker serves a streaming ``research`` skill over the WebSocket bridge. The coordinator serves a
``plan`` skill over gRPC; for each request it subscribes to the worker, relays every worker update
to its own caller as it arrives, and answers with the worker's result. A client then subscribes to
the coordinator and prints the progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from asap import Agent, Incoming, Server, connect, task_envelope
from asap.v1 import payload_pb2, task_pb2


worker = Agent("urn:asap:agent:worker", description="Researches a topic, step by step.")


@worker.skill("research")
async def research(
    request: Incoming[payload_pb2.TaskRequest],
) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
    """Report three steps of progress, then the findings."""
    topic = request.payload.input.fields["topic"].string_value
    for step, what in enumerate(("searching", "reading", "summarising"), start=1):
        yield payload_pb2.TaskUpdate(
            status=task_pb2.TASK_STATUS_WORKING,
            update_type=task_pb2.UPDATE_TYPE_PROGRESS,
            progress_percent=step * 100 / 3,
            message=f"{what} {topic}",
        )
    answer = payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED)
    answer.result.update({"topic": topic, "findings": f"{topic} is well understood"})
    yield answer


def make_coordinator(worker_url: str) -> Agent:
    """Build the coordinator, which delegates to the worker at ``worker_url``."""
    coordinator = Agent("urn:asap:agent:coordinator", description="Plans work and delegates it.")

    @coordinator.skill("plan")
    async def plan(
        request: Incoming[payload_pb2.TaskRequest],
    ) -> AsyncIterator[payload_pb2.TaskUpdate | payload_pb2.TaskResponse]:
        """Delegate to the worker and relay its progress."""
        async with connect(worker_url, sender=coordinator.id) as client:
            delegated = task_envelope(worker.id, "research", dict(request.payload.input))
            async with await client.subscribe(delegated) as updates:
                async for envelope in updates:
                    if envelope.HasField("task_update"):
                        relayed = payload_pb2.TaskUpdate()
                        relayed.CopyFrom(envelope.task_update)
                        relayed.message = f"worker: {relayed.message}"
                        yield relayed
                    elif envelope.HasField("task_response"):
                        yield envelope.task_response

    return coordinator


async def main() -> None:
    """Start both agents, ask the coordinator for a plan, print the progress."""
    worker_server = Server(worker)
    worker_server.add_websocket("127.0.0.1:0")
    async with worker_server:
        worker_url = worker_server.endpoints()[0].url
        coordinator = make_coordinator(worker_url)
        coordinator_server = Server(coordinator)
        coordinator_server.add_grpc("127.0.0.1:0")
        async with coordinator_server:
            url = coordinator_server.endpoints()[0].url
            print(f"worker at {worker_url}, coordinator at {url}")
            async with connect(url, sender="urn:asap:agent:user") as client:
                request = task_envelope(coordinator.id, "plan", {"topic": "tide pools"})
                async with await client.subscribe(request) as updates:
                    async for envelope in updates:
                        if envelope.HasField("task_update"):
                            update = envelope.task_update
                            print(f"progress {update.progress_percent:5.1f}%  {update.message}")
                        else:
                            print(f"result: {dict(envelope.task_response.result)}")


if __name__ == "__main__":
    asyncio.run(main())
