"""One replica for the chaos test, run as a subprocess: ``python -m tests.chaos_replica ...``.

Usage: python -m tests.chaos_replica REDIS_URL PREFIX GRPC_PORT WS_PORT LEASE

Serves an agent whose ``work`` skill records, in Redis (outside every replica, so a killed one's
records survive), each *entry* into the handler and each *completion* per envelope id, and which
replica entered it. Dedupe outcomes are in the same Redis (RedisDedupeStore with a short lease).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from asap import Limits, Server
from asap.core.agent import Agent, Incoming
from asap.stores.redis import RedisDedupeStore
from asap.stores.redis import connect as redis_connect
from asap.v1 import payload_pb2, task_pb2


AGENT = "urn:asap:agent:chaos"


async def main(url: str, prefix: str, grpc_port: int, ws_port: int, lease: float) -> None:
    records = redis_connect(url)
    pid = str(os.getpid())
    agent = Agent(AGENT, name="chaos")

    @agent.skill("work")
    async def work(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        key = request.envelope.id
        # One transaction, so a replica killed here leaves both records or neither.
        entry = records.pipeline(transaction=True)
        entry.hincrby(prefix + "entered", key, 1)
        entry.hsetnx(prefix + "first-entered-by", key, pid)
        await entry.execute()
        await asyncio.sleep(0.001)  # the handler's work: a side effect takes time
        await records.hincrby(prefix + "completed", key, 1)
        return payload_pb2.TaskResponse(task_id=key, status=task_pb2.TASK_STATUS_COMPLETED)

    store = RedisDedupeStore.from_url(url, prefix=prefix, lease=lease)
    server = Server(agent, dedupe=store, limits=Limits(rate_limit_per_second=0))
    server.add_grpc(f"127.0.0.1:{grpc_port}")
    server.add_websocket(f"127.0.0.1:{ws_port}")
    await server.start()
    print("listening", flush=True)  # noqa: T201 - the test waits for it
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1.0)
    await store.aclose()
    await records.aclose()


if __name__ == "__main__":
    url, prefix, grpc_port, ws_port, lease = sys.argv[1:6]
    asyncio.run(main(url, prefix, int(grpc_port), int(ws_port), float(lease)))
