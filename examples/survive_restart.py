"""A client that keeps working while its server *process* is killed and restarted, exactly once.

Run: ``.venv/bin/python examples/survive_restart.py`` (needs ``redis-server`` on PATH, or set
``REDIS_URL`` to a Redis you run; ``scripts/ensure_redis.sh`` installs it as root).

The server is a separate process (this file run as ``serve PORT REDIS_URL``) keeping its dedupe
outcomes in Redis (``RedisDedupeStore``). The client sends envelopes in a loop; after the tenth the
server process is killed (SIGKILL, as a crash) and a new one started on the same port. Calls that
fail with UNAVAILABLE meanwhile are retried with the same envelope ids; the new process finds the
old one's outcomes in Redis, so an envelope that had already been processed is answered from the
store, not run again. The handler counts its runs in Redis too, outside both processes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys

from asap import Agent, Incoming, Limits, RetryPolicy, Server, connect, task_envelope
from asap.stores.redis import RedisDedupeStore
from asap.stores.redis import connect as redis_connect
from asap.v1 import payload_pb2, task_pb2


AGENT = "urn:asap:agent:ledger"
RUNS = "example:survive-restart:runs"


def free_port() -> int:
    """Pick a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def serve(port: int, url: str) -> None:
    """The server process: record each envelope once, outcomes in Redis."""
    runs = redis_connect(url)
    agent = Agent(AGENT, description="Records entries exactly once.")

    @agent.skill("record")
    async def record(request: Incoming[payload_pb2.TaskRequest]) -> payload_pb2.TaskResponse:
        await runs.hincrby(RUNS, request.envelope.id, 1)
        return payload_pb2.TaskResponse(status=task_pb2.TASK_STATUS_COMPLETED)

    store = RedisDedupeStore.from_url(url, prefix="example:survive-restart:")
    server = Server(agent, dedupe=store, limits=Limits(rate_limit_per_second=0))
    server.add_grpc(f"127.0.0.1:{port}")
    await server.start()
    print("listening", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1.0)
    await store.aclose()
    await runs.aclose()


def start_server(port: int, url: str) -> subprocess.Popen[str]:
    """Start the server process and wait until it listens."""
    process = subprocess.Popen(  # noqa: S603 - this file, with our own interpreter
        [sys.executable, __file__, "serve", str(port), url], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None  # noqa: S101 - PIPE was asked for
    if process.stdout.readline().strip() != "listening":
        message = "the server process did not start"
        raise SystemExit(message)
    return process


def start_redis() -> tuple[subprocess.Popen[bytes] | None, str]:
    """REDIS_URL if set, else a throwaway redis-server on a free port."""
    if os.environ.get("REDIS_URL"):
        return None, os.environ["REDIS_URL"]
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        message = "needs redis-server on PATH (scripts/ensure_redis.sh) or REDIS_URL"
        raise SystemExit(message)
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - a fixed argument list
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None  # noqa: S101 - PIPE was asked for
    for line in process.stdout:
        if b"Ready to accept connections" in line:
            return process, f"redis://127.0.0.1:{port}/0"
    message = "redis-server did not start"
    raise SystemExit(message)


async def main() -> None:
    """Send 30 envelopes while the server process is killed and restarted after the tenth."""
    redis, url = start_redis()
    port = free_port()
    runs = redis_connect(url)
    await runs.delete(RUNS)
    server = start_server(port, url)
    retry = RetryPolicy(max_attempts=50, initial_backoff=0.05, max_backoff=0.5)
    answered = 0
    replayed = False
    try:
        async with connect(
            f"grpc://127.0.0.1:{port}", sender="urn:asap:agent:client", retry=retry
        ) as client:
            for number in range(30):
                envelope = client.prepare(task_envelope(AGENT, "record", {"n": number}))
                first = await client.send(envelope)
                answered += 1
                if number == 10:
                    server.kill()  # a crash: no drain, no goodbye
                    server.wait()
                    print("server process killed; starting a new one on the same port")
                    server = start_server(port, url)
                    # The same envelope again: the new process answers it from Redis.
                    again = await client.send(envelope)
                    replayed = again == first
        counts = [int(value) for value in (await runs.hgetall(RUNS)).values()]
    finally:
        server.terminate()
        server.wait()
        await runs.aclose()
        if redis is not None:
            redis.kill()
            redis.wait()
    twice = sum(1 for count in counts if count > 1)
    print(f"answered {answered} of 30, processed {len(counts)} envelopes, {twice} twice")
    print(f"a retransmission after the restart was answered from Redis: {replayed}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
    else:
        asyncio.run(main())
